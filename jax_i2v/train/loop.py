"""The pretraining loop: data -> sharded train step -> metrics, checkpoints and preemption handling.

A SIGTERM (cloud preemption) makes the loop finish its current step, save a checkpoint (state,
data-iterator position, config) and return; starting again with the same workdir resumes from the
newest checkpoint with the same data order and random stream, so the resumed loss curve equals an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
import tqdm

from jax_i2v.compilation_cache import cache_hits, enable_compilation_cache
from jax_i2v.config_utils import unet_config
from jax_i2v.convert import inflate_unet
from jax_i2v.models.text_encoder import text_conditioning
from jax_i2v.models.unet import VideoUNet
from jax_i2v.models.vae import latent_codec
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.train.checkpoint import Checkpointer
from jax_i2v.train.experiment import LoopConfig, build_experiment
from jax_i2v.train.inputs import global_batch, training_inputs
from jax_i2v.train.previews import PreviewWriter
from jax_i2v.train.runtime import Cadence, MetricsLog, Preemption, config_section
from jax_i2v.train.state import create_train_state, state_from_params
from jax_i2v.train.step import check_batch_size, compiled_flops

log = logging.getLogger(__name__)


def _inflated_params(params: Any, model: VideoUNet, image_unet_dir: str) -> Any:
    if isinstance(params, dict) and set(params) == {"unet", "text"}:
        return {**params, "unet": inflate_unet(image_unet_dir, model, params["unet"])}
    return inflate_unet(image_unet_dir, model, params)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until `config.train.steps`, the time limit or a SIGTERM; returns the last logged metrics."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    enable_compilation_cache(config.get("compilation_cache_dir", ""), os.path.join(workdir, "compilation_cache"))
    loop = config_section(config, "train", LoopConfig)
    mesh = create_mesh(config.mesh.ici.to_dict(), config.mesh.get("dcn", ml_collections.ConfigDict()).to_dict())
    check_batch_size(loop.batch_size, mesh, loop.grad_accum_steps)
    model_config = unet_config(config)
    text = text_conditioning(config.get("text_encoder"), config.data.text_len, model_config.cross_attention_dim)
    experiment = build_experiment(config, mesh, text.module)
    model, optimizer, rules, shardings = experiment.model, experiment.optimizer, experiment.rules, experiment.shardings
    init_params, abstract = experiment.init_params, experiment.abstract_state
    codec = latent_codec(config)
    init_rng, step_rng = jax.random.split(jax.random.key(loop.seed))
    use_ema = experiment.step_config.ema_decay > 0
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

    train_step = experiment.train_step
    step = int(state.step)
    is_chief = jax.process_index() == 0
    metrics_log = MetricsLog(workdir, step, config.get("tensorboard", True))
    preemption = Preemption()
    cadence = Cadence(loop.steps, loop.log_every, loop.checkpoint_every, loop.time_limit_minutes, started)
    last: dict[str, Any] = {}
    bar = tqdm.tqdm(total=loop.steps, initial=step, desc="training", unit="step", disable=not is_chief)
    compiled, flops_per_step, compile_seconds = None, float("nan"), None
    window_start, window_steps = time.perf_counter(), 0

    def save():
        checkpointer.save(step, state, data_iter, config.to_dict())

    try:
        while step < loop.steps:
            batch = global_batch(next(data_iter), mesh, text.caption_key, codec, inputs.encoded)
            if compiled is None:
                # Compiled explicitly (once) so XLA's FLOP count of the step is at hand for TFLOP/s.
                lowered = train_step.lower(state, batch, text.null_caption, step_rng)
                compile_start = time.perf_counter()
                with cache_hits() as hits:
                    compiled = lowered.compile()  # a restart loads it from the persistent compilation cache
                compile_seconds = time.perf_counter() - compile_start
                compile_cache_hit = int(hits[0] > 0)
                log.info("train step compiled in %.1f s%s", compile_seconds, " (from the compilation cache)" * compile_cache_hit)
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
                if compile_seconds is not None:  # the first record of each invocation
                    metrics["compile_s"], metrics["compile_cache_hit"], compile_seconds = compile_seconds, compile_cache_hit, None
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
