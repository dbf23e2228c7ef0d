"""The pretraining loop: data -> sharded train step -> metrics, checkpoints and preemption handling.

A SIGTERM (cloud preemption) makes the loop finish its current step, save a checkpoint (state,
data-iterator position, config) and return; starting again with the same workdir resumes from the
newest checkpoint with the same data order and random stream, so the resumed loss curve equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from jax_i2v.config_utils import dtype, unet_config
from jax_i2v.convert import inflate_unet
from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.text_encoder import TextConditioning, text_conditioning
from jax_i2v.models.unet import REMAT_POLICIES, VideoUNet, build_unet, dummy_inputs, map_mixers
from jax_i2v.models.vae import latent_codec
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.parallel.partitioning import rules_from_config
from jax_i2v.train.checkpoint import Checkpointer
from jax_i2v.train.inputs import global_batch, training_inputs
from jax_i2v.train.previews import PreviewWriter
from jax_i2v.train.runtime import Cadence, MetricsLog, Preemption, config_section
from jax_i2v.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jax_i2v.train.state import abstract_train_state, create_train_state, state_from_params, state_shardings
from jax_i2v.train.step import StepConfig, check_batch_size, compiled_flops, make_train_step, unet_loss_fn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The `train` section of an experiment config."""

    batch_size: int = 8  # global, over all hosts
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    remat_policy: str = "none"
    grad_accum_steps: int = 1
    ema_decay: float = 0.0
    sample_every: int = 0  # 0: no sample videos during training
    sample_videos: int = 2
    sample_steps: int = 25
    # Wall-clock budget of one invocation in minutes, compilation included (0: none): the run then
    # stops at the first logged step past it, saving a checkpoint and sample videos as at the end.
    time_limit_minutes: float = 0.0
    # Initial value of every temporal alpha mixer (output = alpha * input + (1 - alpha) * temporal
    # layer). 1, the reference's, starts the temporal layers switched off, which suits inflating a
    # pretrained image UNet; from scratch, 0 (plain residual layers) lets frames learn their motion
    # from step 0 instead of waiting for Adam to walk each alpha down.
    temporal_mixer_init: float = 1.0
    # A diffusers image UNet folder (e.g. SD-2.1-base's unet/) whose spatial weights start a fresh
    # run, as the reference starts from SD ("": random init). Ignored when resuming.
    init_from_image_unet: str = ""

    def __post_init__(self):
        positive = ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps", "sample_videos", "sample_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 0 or not isinstance(self.sample_every, int) or self.sample_every < 0:
            raise ValueError(f"steps and sample_every must be integers >= 0, got {self.steps!r}, {self.sample_every!r}")
        if not isinstance(self.time_limit_minutes, (int, float)) or self.time_limit_minutes < 0:
            raise ValueError(f"time_limit_minutes must be a number >= 0, got {self.time_limit_minutes!r}")
        if not isinstance(self.temporal_mixer_init, (int, float)) or not 0.0 <= self.temporal_mixer_init <= 1.0:
            raise ValueError(f"temporal_mixer_init must be in [0, 1], got {self.temporal_mixer_init!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.init_from_image_unet and not os.path.isdir(self.init_from_image_unet):
            raise ValueError(f"init_from_image_unet: no folder at {self.init_from_image_unet!r}")


def initial_params(rng: jax.Array, model: VideoUNet, text: TextConditioning, temporal_mixer_init: float = 1.0) -> Any:
    """Fresh params: the UNet's (its alpha mixers at `temporal_mixer_init`), and {"unet", "text"}
    when the caption encoder trains too."""
    unet_rng, text_rng = jax.random.split(rng)
    unet = model.init(unet_rng, **dummy_inputs(model.config))["params"]
    unet = map_mixers(lambda alpha: jnp.full_like(alpha, temporal_mixer_init), unet)
    if text.module is None:
        return unet
    return {"unet": unet, "text": text.module.init(text_rng, text.null_caption[None])["params"]}


def _inflated_params(params: Any, model: VideoUNet, image_unet_dir: str) -> Any:
    if isinstance(params, dict) and set(params) == {"unet", "text"}:
        return {**params, "unet": inflate_unet(image_unet_dir, model, params["unet"])}
    return inflate_unet(image_unet_dir, model, params)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until `config.train.steps`, the time limit or a SIGTERM; returns the last logged metrics."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    loop = config_section(config, "train", LoopConfig)
    mesh = create_mesh(config.mesh.ici.to_dict(), config.mesh.get("dcn", ml_collections.ConfigDict()).to_dict())
    check_batch_size(loop.batch_size, mesh, loop.grad_accum_steps)
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())
    optim = config_section(config, "optim", OptimizerConfig)
    objective = config_section(config, "objective", ObjectiveConfig)
    optimizer = make_optimizer(optim)
    step_config = StepConfig(grad_accum_steps=loop.grad_accum_steps, ema_decay=loop.ema_decay)
    model = build_unet(
        unet_config(config),
        dtype=dtype(config.dtype),
        param_dtype=dtype(config.get("param_dtype", "float32")),
        remat_policy=loop.remat_policy,
    )
    text = text_conditioning(config.get("text_encoder"), config.data.text_len, model.config.cross_attention_dim)
    codec = latent_codec(config)

    init_params = functools.partial(initial_params, model=model, text=text, temporal_mixer_init=loop.temporal_mixer_init)
    init_rng, step_rng = jax.random.split(jax.random.key(loop.seed))
    use_ema = step_config.ema_decay > 0
    abstract = abstract_train_state(init_params, optimizer, init_rng, use_ema)
    shardings = state_shardings(abstract, optimizer, mesh, rules)
    inputs = training_inputs(config, loop.batch_size, loop.seed, text, codec)
    data_iter = inputs.iterator
    previews = None
    if loop.sample_every:
        previews = PreviewWriter(config, *inputs.preview_examples(loop.sample_videos), workdir, loop.sample_steps, loop.seed)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=loop.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(abstract, shardings, data_iter)
        log.info("resumed from step %d", int(state.step))
    elif loop.init_from_image_unet:
        state = state_from_params(_inflated_params(init_params(init_rng), model, loop.init_from_image_unet), optimizer, mesh, rules, use_ema)
        log.info("spatial layers from %s", loop.init_from_image_unet)
    else:
        state = create_train_state(init_params, optimizer, init_rng, mesh, rules, use_ema)

    loss_fn = unet_loss_fn(model, make_schedule(**config.schedule.to_dict()), objective, text.module)
    train_step = make_train_step(loss_fn, optimizer, learning_rate_schedule(optim), shardings, mesh, rules, step_config)
    step = int(state.step)
    is_chief = jax.process_index() == 0
    metrics_log = MetricsLog(workdir, step, config.get("tensorboard", True))
    preemption = Preemption()
    cadence = Cadence(loop.steps, loop.log_every, loop.checkpoint_every, loop.time_limit_minutes, started)
    last: dict[str, Any] = {}
    bar = tqdm.tqdm(total=loop.steps, initial=step, desc="training", unit="step", disable=not is_chief)
    compiled, flops_per_step = None, float("nan")
    window_start, window_steps = time.perf_counter(), 0

    def save():
        checkpointer.save(step, state, data_iter, config.to_dict())

    try:
        while step < loop.steps:
            batch = global_batch(next(data_iter), mesh, text.caption_key, codec, inputs.encoded)
            if compiled is None:
                # Compiled explicitly (once) so XLA's FLOP count of the step is at hand for TFLOP/s.
                compiled = train_step.lower(state, batch, text.null_caption, step_rng).compile()
                # XLA counts a loop body once: scale by the micro-batches of gradient accumulation.
                flops_per_step = compiled_flops(compiled) * mesh.size * loop.grad_accum_steps
                window_start = time.perf_counter()
            state, metrics = compiled(state, batch, text.null_caption, step_rng)
            step += 1
            window_steps += 1
            bar.update(1)
            log_now, save_now, out_of_time = cadence.after(step)
            if log_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                metrics["steps_per_sec"] = window_steps / elapsed
                metrics["examples_per_sec"] = metrics["steps_per_sec"] * loop.batch_size
                metrics["tflops_per_sec"] = metrics["steps_per_sec"] * flops_per_step / 1e12
                last = {"step": step, **metrics}
                window_start, window_steps = time.perf_counter(), 0
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tflops=f"{metrics['tflops_per_sec']:.3g}")
                metrics_log.write(step, metrics)
            if save_now:
                save()
            if previews is not None and (step % loop.sample_every == 0 or step == loop.steps or out_of_time):
                paths = previews.write(step, state.ema_params if use_ema else state.params)
                if paths:
                    log.info("step %d: sample videos %s", step, ", ".join(paths))
                window_start, window_steps = time.perf_counter(), 0
            if cadence.should_stop(step, out_of_time, preemption):
                save()
                break
    finally:
        preemption.restore()
        checkpointer.close()
        bar.close()
        metrics_log.close()
    return last
