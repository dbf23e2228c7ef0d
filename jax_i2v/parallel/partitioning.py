"""Logical axis names for every parameter and activation, and the rules that map them to mesh axes.

The UNet's parameter names are the diffusers layout (kept so checkpoints convert 1:1), so logical
axes are assigned from the parameter path rather than stored as module metadata; rules then turn
logical names into mesh axes. Changing the rules switches between data parallel, FSDP and tensor
parallel without touching the model:

  fsdp:   every large weight is split along its model-width dimension over `fsdp`;
  tensor: attention heads and MLP hidden units are split over `tensor` (Megatron-style), and
          convolution output channels over `fsdp` x `tensor`.

A dimension that the mesh axes do not divide stays replicated, so tiny models run on any mesh.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import jax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = tuple[Optional[str], ...]
MeshAxes = Union[None, str, tuple[str, ...]]

# (logical name, mesh axes); the first rule for a name wins.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("conv_out", ("fsdp", "tensor")),
    ("conv_in", None),
    ("embed_in", None),
    ("kernel_space", None),
    ("vector", None),
    ("frames", None),
    ("height", None),
    ("width", None),
    ("channels", None),
)

# Activations at UNet block boundaries, (B, F, H, W, C).
VIDEO_ACTIVATION_AXES: LogicalAxes = ("batch", "frames", "height", "width", "channels")

_ATTENTION_IN = {"to_q", "to_k", "to_v"}
_ATTENTION_OUT = {"to_out_0"}


def parameter_logical_axes(path: Sequence[str], ndim: int) -> LogicalAxes:
    """Logical axes of one UNet parameter, from its path (e.g. ("down_blocks_0", ..., "to_q", "kernel"))."""
    leaf = path[-1]
    parent = path[-2] if len(path) > 1 else ""
    if leaf != "kernel" or ndim < 2:
        return ("vector",) * ndim  # biases, norm scales, alpha mixers, rotary frequencies
    if ndim > 2:  # (kh, kw, in, out) or (kt, kh, kw, in, out) convolutions
        return ("kernel_space",) * (ndim - 2) + ("conv_in", "conv_out")
    if parent in _ATTENTION_IN:
        return ("embed", "heads")
    if parent in _ATTENTION_OUT:
        return ("heads", "embed")
    if parent == "proj" and "ff" in path:  # GEGLU input projection
        return ("embed", "mlp")
    if parent == "net_2" and "ff" in path:  # feed-forward output
        return ("mlp", "embed")
    return ("embed_in", "embed")


def params_logical_axes(params: Any) -> Any:
    """The tree of `parameter_logical_axes` for a params tree (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: parameter_logical_axes(path, len(x.shape)) for path, x in flat.items()})


def _rule_table(rules: Iterable[tuple[str, MeshAxes]]) -> dict[str, MeshAxes]:
    table: dict[str, MeshAxes] = {}
    for name, axes in rules:
        table.setdefault(name, axes)
    return table


def logical_to_partition_spec(
    logical: LogicalAxes, shape: Sequence[int], mesh: Mesh, rules: Iterable[tuple[str, MeshAxes]] = DEFAULT_RULES
) -> PartitionSpec:
    """PartitionSpec for an array of `shape`: each dimension takes the mesh axes its logical name maps
    to, minus axes of size 1, axes already used by an earlier dimension, and axes that would not
    divide it."""
    table = _rule_table(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape):
        if name is not None and name not in table:
            raise ValueError(f"no sharding rule for logical axis {name!r}; rules cover {sorted(table)}")
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        chosen = []
        ways = 1
        for axis in axes:
            n = mesh.shape[axis]
            if n == 1 or axis in used or size % (ways * n):
                continue
            chosen.append(axis)
            ways *= n
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def tree_shardings(tree: Any, logical_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """NamedShardings for every leaf of `tree` from the matching logical axes in `logical_tree`."""
    return jax.tree_util.tree_map(
        lambda axes, x: NamedSharding(mesh, logical_to_partition_spec(axes, x.shape, mesh, rules)),
        logical_tree,
        tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x),
    )


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves (arrays or structs) carrying the matching `shardings`:
    what `jit(...).lower` and Orbax restores take for a sharded argument."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The whole array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def params_shardings(params: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    return tree_shardings(params, params_logical_axes(params), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
    """Leading (batch) dimension split over the batch-parallel axes, the rest replicated."""
    table = _rule_table(rules)
    axes = table["batch"]
    axes = (axes,) if isinstance(axes, str) else tuple(a for a in (axes or ()) if mesh.shape[a] > 1)
    batch_axes = None if not axes else axes[0] if len(axes) == 1 else tuple(axes)
    return NamedSharding(mesh, PartitionSpec(batch_axes, *([None] * (ndim - 1))))


def rules_from_config(overrides: Optional[Mapping[str, MeshAxes]] = None) -> tuple[tuple[str, MeshAxes], ...]:
    """DEFAULT_RULES with some logical names remapped, e.g. {"embed": None} turns FSDP off for
    dense weights; lists become tuples."""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    unknown = set(overrides) - {name for name, _ in DEFAULT_RULES}
    if unknown:
        raise ValueError(f"sharding rules name unknown logical axes {sorted(unknown)}")
    return tuple((name, overrides.get(name, axes)) for name, axes in DEFAULT_RULES)
