"""Device meshes with named axes: `data` (pure data parallel), `fsdp` (data parallel with
parameters and optimizer state sharded, ZeRO-3 style) and `tensor` (intra-layer model parallel).

Multi-slice (DCN) setups get a hybrid mesh: the `dcn_*` sizes multiply the same named axes across
slices, so sharding rules never need to know whether an axis crosses slices.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for MESH_AXES with at most one -1 filled so that the product is `num_devices`."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    values = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    if values.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, values))}")
    if any(v == 0 or v < -1 for v in values):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, values))}")
    known = math.prod(v for v in values if v != -1)
    if -1 in values:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into the fixed mesh axes (product {known})")
        values[values.index(-1)] = num_devices // known
    if math.prod(values) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, values))} has {math.prod(values)} devices, but {num_devices} are available")
    return tuple(values)


def create_mesh(
    ici: Mapping[str, int],
    dcn: Optional[Mapping[str, int]] = None,
    devices: Optional[Sequence[jax.Device]] = None,
) -> Mesh:
    """A mesh over `devices` (default: all devices of all processes).

    ici: axis sizes within a slice, e.g. {"data": -1, "fsdp": 4}; dcn: across slices (multi-slice),
    e.g. {"data": 2}. The mesh's axis sizes are the products.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = dict(dcn or {})
    if -1 in dcn.values():
        raise ValueError(f"DCN mesh sizes must be given explicitly, got {dcn}")
    dcn_sizes = resolve_axis_sizes(dcn, math.prod(int(v) for v in dcn.values()))
    num_slices = math.prod(dcn_sizes)
    if len(devices) % num_slices:
        raise ValueError(f"{len(devices)} devices cannot form {num_slices} slices")
    ici_sizes = resolve_axis_sizes(ici, len(devices) // num_slices)
    if num_slices > 1:
        if all(hasattr(d, "slice_index") for d in devices):
            grid = mesh_utils.create_hybrid_device_mesh(ici_sizes, dcn_sizes, devices)
        else:
            # Devices without slice information (CPU, single-slice GPU): consecutive blocks of
            # devices play the slices, each mesh axis being (dcn, ici) with the slice index major.
            blocks = np.asarray(devices, dtype=object).reshape(dcn_sizes + ici_sizes)
            grid = blocks.transpose(0, 3, 1, 4, 2, 5).reshape([d * i for d, i in zip(dcn_sizes, ici_sizes)])
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_sizes, devices)
        except (NotImplementedError, ValueError, AssertionError):
            # Topologies mesh_utils has no layout for (e.g. subsets of devices): plain device order.
            grid = np.asarray(devices, dtype=object).reshape(ici_sizes)
    return Mesh(grid, MESH_AXES)


def batch_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
