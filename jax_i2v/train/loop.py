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
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_i2v.compilation_cache import configure_run_compilation
from jax_i2v.config_utils import latent_codec, text_conditioning, unet_config
from jax_i2v.convert import inflate_unet
from jax_i2v.data.video_pipeline import UNREADABLE_KEY
from jax_i2v.models.unet import VideoUNet
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.train.encoders import frozen_params, place, step_captions
from jax_i2v.train.experiment import LoopConfig, build_experiment
from jax_i2v.train.inputs import global_batch, training_inputs
from jax_i2v.train.previews import PreviewWriter
from jax_i2v.train.runner import RunSettings, run_steps
from jax_i2v.train.runtime import config_section
from jax_i2v.train.state import create_train_state
from jax_i2v.train.step import check_batch_size

log = logging.getLogger(__name__)


def _inflated_params(params: Any, model: VideoUNet, image_unet_dir: str) -> Any:
    if isinstance(params, dict) and set(params) == {"unet", "text"}:
        return {**params, "unet": inflate_unet(image_unet_dir, model, params["unet"])}
    return inflate_unet(image_unet_dir, model, params)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until `config.train.steps`, the time limit or a SIGTERM; returns the last logged metrics."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    configure_run_compilation(config, workdir)
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
    frozen = ()
    if experiment.encoders is not None:  # raw clips: the step encodes them with these params
        frozen = (place(frozen_params(codec, text, experiment.encoders), experiment.frozen_shardings, experiment.abstract_frozen),)
        text = step_captions(text, experiment.encoders)
    inputs = training_inputs(config, loop.batch_size, loop.seed, text, codec)
    del codec  # the frozen weights live on split over the mesh, not whole on a device
    data_iter = inputs.iterator
    previews = None
    if loop.sample_every:
        previews = PreviewWriter(config, *inputs.preview_examples(loop.sample_videos), workdir, loop.sample_steps, loop.seed, mesh)

    def init_state():
        state = create_train_state(init_params, optimizer, init_rng, mesh, rules, use_ema)
        if not loop.init_from_image_unet:
            return state
        # Written into the sharded fresh state, shard by shard; Adam's moments start at zero either way.
        log.info("spatial layers from %s", loop.init_from_image_unet)
        params = _inflated_params(state.params, model, loop.init_from_image_unet)
        return state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None)

    def write_previews(step: int, state, out_of_time: bool) -> bool:
        if previews is None or not (step % loop.sample_every == 0 or step == loop.steps or out_of_time):
            return False
        paths = previews.write(step, state.ema_params if use_ema else state.params)
        if paths:
            log.info("step %d: sample videos %s", step, ", ".join(paths))
        return True

    unreadable_videos = 0

    def next_batch():
        nonlocal unreadable_videos
        local = next(data_iter)
        unreadable_videos += int(np.sum(local.get(UNREADABLE_KEY, 0)))
        return global_batch(local, mesh, text.caption_key, inputs.encoded, rules)

    result = run_steps(
        workdir,
        RunSettings.of(loop),
        abstract,
        shardings,
        init_state,
        experiment.train_step,
        next_batch,
        extra_args=(text.null_caption, step_rng, *frozen),
        data_iterator=data_iter,
        config_dict=config.to_dict(),
        tensorboard=config.get("tensorboard", True),
        started=started,
        desc="training",
        postfix=lambda m: {"loss": f"{m['loss']:.4f}", "tflops": f"{m['tflops_per_sec']:.3g}"},
        after_step=write_previews,
        loop_iterations=loop.grad_accum_steps,
        host_metrics=lambda: {"unreadable_videos": unreadable_videos},
    )
    return result.last_metrics
