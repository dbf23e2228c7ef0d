"""Moving small arrays between one host and a mesh that spans processes, and waiting for all."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jax_i2v.parallel.partitioning import replicated_sharding

_barriers = 0


def _coordination_client():
    from jax._src import distributed  # the runtime's client; JAX has no public barrier

    return distributed.global_state.client


def wait_for_all_processes(what: str, timeout_s: int = 3600) -> None:
    """Returns once every process got here. Through the coordination service, not a collective:
    CPU (gloo) collectives give up when a process joins 30 s after another, as after a compile
    that took one process longer (a persistent-cache hit on one host and not another)."""
    global _barriers
    if jax.process_count() == 1:
        return
    _barriers += 1
    _coordination_client().wait_at_barrier(f"jax_i2v_{_barriers}_{what}", timeout_s * 1000)


def all_processes_agree(ok: bool, what: str, timeout_s: int = 3600) -> bool:
    """Whether `ok` holds on every process (each must call it), through the coordination service's
    key-value store like `wait_for_all_processes`, so processes may arrive minutes apart."""
    if jax.process_count() == 1:
        return ok
    client = _coordination_client()
    key = f"jax_i2v_agree_{_barriers + 1}_{what}"
    client.key_value_set(f"{key}/{jax.process_index()}", "1" if ok else "0")
    wait_for_all_processes(what, timeout_s)
    return all(client.blocking_key_value_get(f"{key}/{i}", timeout_s * 1000) == "1" for i in range(jax.process_count()))


def host_copy(tree: Any) -> Any:
    """`tree` as numpy on this host, gathered through a collective when its arrays are split across
    processes (every process must call it then)."""
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in jax.tree_util.tree_leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def replicated(tree: Any, mesh: Mesh) -> Any:
    """`tree` (the same values on every process: numpy, local arrays or PRNG keys) replicated over
    `mesh`, so it can meet arrays split across processes in one `jit`."""
    sharding = replicated_sharding(mesh)

    def place(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        value = np.asarray(host_copy(x))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(place, tree)
