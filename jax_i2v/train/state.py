"""The pretraining state and its sharded creation.

The state's shape is found with `jax.eval_shape`, its shardings from the logical-axis rules, and
it is then created by a `jit` whose outputs are already sharded, so a model larger than one device
never exists unsharded anywhere.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jax_i2v.parallel.partitioning import DEFAULT_RULES, params_shardings, replicated_sharding


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params / ema_params: fp32 master weights (ema_params None when off)."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any = None


def state_shardings(abstract: TrainState, optimizer: optax.GradientTransformation, mesh: Mesh, rules=DEFAULT_RULES) -> TrainState:
    """Shardings for a (shape-only) state: optimizer moments and EMA follow their parameters."""
    replicated = replicated_sharding(mesh)
    params = params_shardings(abstract.params, mesh, rules)
    opt_state = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract.opt_state, params, transform_non_params=lambda _: replicated
    )
    return TrainState(
        step=replicated,
        params=params,
        opt_state=opt_state,
        ema_params=None if abstract.ema_params is None else params,
    )


def _initial_state(params: Any, optimizer: optax.GradientTransformation, use_ema: bool) -> TrainState:
    ema = jax.tree_util.tree_map(jnp.copy, params) if use_ema else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), ema_params=ema)


def abstract_train_state(
    init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation, rng: jax.Array, use_ema: bool = False
) -> TrainState:
    """Shapes and dtypes of the state, computed without allocating it."""
    return jax.eval_shape(lambda rng: _initial_state(init_params(rng), optimizer, use_ema), rng)


def create_train_state(
    init_params: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    rules=DEFAULT_RULES,
    use_ema: bool = False,
) -> TrainState:
    """Sharded initial state. `init_params(rng)` -> params tree (traced under `jit`)."""

    def init(rng):
        return _initial_state(init_params(rng), optimizer, use_ema)

    shardings = state_shardings(jax.eval_shape(init, rng), optimizer, mesh, rules)
    return jax.jit(init, out_shardings=shardings)(rng)


def state_from_params(
    params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, rules=DEFAULT_RULES, use_ema: bool = False
) -> TrainState:
    """A fresh state around existing (e.g. converted or inflated) params, placed on the mesh."""
    params = jax.device_put(params, params_shardings(params, mesh, rules))

    def init(params):
        return _initial_state(params, optimizer, use_ema)

    shardings = state_shardings(jax.eval_shape(init, params), optimizer, mesh, rules)
    return jax.jit(init, out_shardings=shardings)(params)
