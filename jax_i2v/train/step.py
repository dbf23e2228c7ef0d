"""The pretraining step: (frozen encoders on raw clips) -> diffusion loss -> gradients (optionally
accumulated over micro-batches) -> AdamW -> alpha-mixer clamp -> EMA, as one `jax.jit` with
explicit shardings and the state donated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_i2v.diffusion.objective import ObjectiveConfig, diffusion_loss
from jax_i2v.diffusion.schedules import NoiseSchedule
from jax_i2v.models.unet import VideoUNet, apply_unet, clamp_mixers
from jax_i2v.parallel.mesh import batch_parallel_size
from jax_i2v.parallel.partitioning import DEFAULT_RULES, batch_sharding, replicated_sharding
from jax_i2v.train.encoders import FrozenEncoders, encode_key
from jax_i2v.train.state import TrainState

Batch = Mapping[str, jax.Array]
# The metric every step reports: 1.0 where a non-finite loss or gradient norm skipped the update.
NONFINITE_METRIC = "nonfinite"


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum_steps: int = 1
    ema_decay: float = 0.0  # 0: no EMA

    def __post_init__(self):
        if self.grad_accum_steps < 1 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"need grad_accum_steps >= 1 and 0 <= ema_decay < 1, got {self.grad_accum_steps}, {self.ema_decay}")


def unet_loss_fn(model: VideoUNet, schedule: NoiseSchedule, objective: ObjectiveConfig, text_module=None) -> Callable:
    """loss(params, batch, null_text, rng) -> scalar for the video UNet.

    Without `text_module`, params are the UNet's and batch["text"] / null_text are embeddings.
    With it (a trainable caption encoder), params are {"unet": ..., "text": ...}, batch["tokens"]
    holds (B, L) token ids and null_text the empty caption's (L,) ids; both encoders train jointly.
    """

    apply = functools.partial(apply_unet, model)

    def loss(params, batch, null_text, rng):
        if text_module is not None:
            encode = lambda ids: text_module.apply({"params": params["text"]}, ids)
            batch = {**{k: v for k, v in batch.items() if k != "tokens"}, "text": encode(batch["tokens"])}
            null_text = encode(null_text[None])[0]
            params = params["unet"]
        return diffusion_loss(apply, params, batch, null_text, rng, schedule, objective)[0]

    return loss


def check_batch_size(batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
    ways = batch_parallel_size(mesh)
    if batch_size % (ways * grad_accum_steps):
        raise ValueError(
            f"global batch size {batch_size} is not divisible by data x fsdp = {ways} times grad_accum_steps = {grad_accum_steps}"
        )


def compiled_flops(compiled) -> float:
    """FLOPs of one call of a compiled step per device, from XLA's cost model (nan if none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def skip_nonfinite(old_state, new_state, *values: jax.Array):
    """(`new_state`, 0.0) when every value (losses, gradient norms) is finite; else (`old_state`
    with only its step advanced, 1.0): parameters, optimizer state and EMA stay as they were."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))
    kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
    return kept.replace(step=new_state.step), 1.0 - finite.astype(jnp.float32)


def micro_batches(batch: Batch, steps: int, mesh: Mesh, rules=DEFAULT_RULES) -> Batch:
    """(B, ...) arrays -> (steps, B / steps, ...), micro-batch s holding rows s, s + steps, ... so
    each device's rows split evenly between micro-batches: every micro-batch keeps the batch's
    sharding over data x fsdp, and splitting moves no data between devices."""

    def split(x):
        micro = jnp.swapaxes(x.reshape((x.shape[0] // steps, steps) + x.shape[1:]), 0, 1)
        spec = batch_sharding(mesh, x.ndim, rules).spec
        return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, PartitionSpec(None, *spec)))

    return jax.tree_util.tree_map(split, batch)


def encoded_batch(encoders: FrozenEncoders, frozen_params, batch: Batch, null_text: jax.Array, rng: jax.Array, mesh: Mesh, rules):
    """A raw batch -> the loss's batch: "video" (B, F, H, W, 3) pixels -> "latents" (B, F, h, w, C),
    a posterior sample drawn from `encode_key(rng)`; with a frozen caption encoder, "tokens" (B, L)
    and the null caption's (L,) ids -> "text" (B, L, D) and its (L, D) embedding. Other keys pass."""
    batch = dict(batch)
    latents = encoders.encode_video(frozen_params, batch.pop("video"), encode_key(rng))
    batch["latents"] = jax.lax.with_sharding_constraint(latents, batch_sharding(mesh, latents.ndim, rules))
    if encoders.caption_module is not None:
        batch["text"] = encoders.caption_embeddings(frozen_params, batch.pop("tokens"))
        null_text = encoders.caption_embeddings(frozen_params, null_text[None])[0]
    return batch, null_text


def _accumulated_value_and_grad(loss_fn, params, batch, null_text, rng, steps: int, mesh: Mesh, rules, prepare):
    """Mean loss and gradient over `steps` equal micro-batches (a `scan`, so memory is one micro-batch,
    encoders included). `prepare(batch, null_text, rng)` turns each (micro-)batch into the loss's."""

    def grad_fn(params, batch, null_text, rng):
        batch, null_text = prepare(batch, null_text, rng)
        return jax.value_and_grad(loss_fn)(params, batch, null_text, rng)

    if steps == 1:
        return grad_fn(params, batch, null_text, rng)

    def body(carry, inputs):
        index, micro_batch = inputs
        loss, grads = grad_fn(params, micro_batch, null_text, jax.random.fold_in(rng, index))
        total_loss, total_grads = carry
        return (total_loss + loss, jax.tree_util.tree_map(jnp.add, total_grads, grads)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    micro = micro_batches(batch, steps, mesh, rules)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(steps), micro))
    return loss / steps, jax.tree_util.tree_map(lambda g: g / steps, grads)


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    state_sharding: TrainState,
    mesh: Mesh,
    rules=DEFAULT_RULES,
    config: StepConfig = StepConfig(),
    encoders: Optional[FrozenEncoders] = None,
    frozen_sharding: Any = None,
):
    """train_step(state, batch, null_text, rng[, frozen_params]) -> (state, metrics), compiled
    once per batch signature.

    The step's randomness is `fold_in(rng, state.step)`: the same draws whatever the mesh, and a
    resumed run continues the same stream. Batch arrays are split on their leading dimension over
    data x fsdp; metrics (loss, grad_norm, lr, nonfinite) are replicated scalars. `state` is donated.
    A non-finite loss or gradient norm skips the update (`skip_nonfinite`).

    Batches hold "latents" (a latent cache), or with `encoders` raw clips ("video" pixels, and
    token ids for a frozen caption encoder) that the step encodes (`encoded_batch`), per
    micro-batch; `frozen_params` are then the encoders' params, placed as `frozen_sharding`.
    """
    replicated = replicated_sharding(mesh)

    def step(state: TrainState, batch: Batch, null_text: jax.Array, rng: jax.Array, frozen_params):
        rng = jax.random.fold_in(rng, state.step)

        def prepare(batch, null_text, rng):
            if encoders is None:
                return batch, null_text
            return encoded_batch(encoders, frozen_params, batch, null_text, rng, mesh, rules)

        steps = config.grad_accum_steps
        loss, grads = _accumulated_value_and_grad(loss_fn, state.params, batch, null_text, rng, steps, mesh, rules, prepare)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = clamp_mixers(optax.apply_updates(state.params, updates))
        ema = state.ema_params
        if ema is not None:
            ema = optax.incremental_update(params, ema, step_size=1.0 - config.ema_decay)
        grad_norm = optax.tree.norm(grads)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        new_state, nonfinite = skip_nonfinite(state, new_state, loss, grad_norm)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": learning_rate(state.step), NONFINITE_METRIC: nonfinite}
        return new_state, metrics

    def batch_shardings(batch: Batch):
        return {key: batch_sharding(mesh, jnp.ndim(value), rules) for key, value in batch.items()}

    def cached_latents_step(state: TrainState, batch: Batch, null_text: jax.Array, rng: jax.Array):
        return step(state, batch, null_text, rng, {})

    # With encoders, the frozen params are a fifth argument; without, the step takes four.
    step_fn, frozen_in = (cached_latents_step, ()) if encoders is None else (step, (frozen_sharding or {},))
    compiled = {}

    def jitted(batch: Batch):
        signature = tuple(sorted((k, jnp.ndim(v)) for k, v in batch.items()))
        if signature not in compiled:
            check_batch_size(next(iter(batch.values())).shape[0], mesh, config.grad_accum_steps)
            if ("video" in batch) != (encoders is not None):
                raise ValueError(f"this step takes {'raw clips (video)' if encoders else 'latents'}; the batch holds {sorted(batch)}")
            compiled[signature] = jax.jit(
                step_fn,
                in_shardings=(state_sharding, batch_shardings(batch), replicated, replicated) + frozen_in,
                out_shardings=(state_sharding, replicated),
                donate_argnums=(0,),
            )
        return compiled[signature]

    def train_step(state: TrainState, batch: Batch, *args):
        """args: null_text, rng (and frozen_params with encoders)."""
        # Activation constraints inside the model resolve against this mesh and these rules at trace time.
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(batch)(state, batch, *args)

    def lower(state, batch, *args):
        """Ahead-of-time lowering (arguments may be ShapeDtypeStructs), e.g. for a TPU topology."""
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(batch).lower(state, batch, *args)

    train_step.lower = lower
    return train_step
