"""The pretraining loop: data -> sharded train step -> metrics, checkpoints and preemption handling.

A SIGTERM (cloud preemption) makes the loop finish its current step, save a checkpoint (state,
data-iterator position, config) and return; starting again with the same workdir resumes from the
newest checkpoint with the same data order and random stream, so the resumed loss curve equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jax_i2v.config_utils import dtype, unet_config
from jax_i2v.data.moving_shapes_tfds import build_moving_shapes, load_moving_shapes
from jax_i2v.data.video_pipeline import ClipConfig, training_dataset
from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.text_encoder import TextTransformer, WordTokenizer
from jax_i2v.models.unet import build_unet, dummy_inputs
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.parallel.partitioning import batch_sharding, rules_from_config
from jax_i2v.text import HashedWordEncoder
from jax_i2v.train.checkpoint import Checkpointer
from jax_i2v.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jax_i2v.train.state import abstract_train_state, create_train_state, state_shardings
from jax_i2v.train.step import StepConfig, check_batch_size, make_train_step, unet_loss_fn

log = logging.getLogger(__name__)


class _Preemption:
    """Turns SIGTERM into a flag the loop polls between steps (agreed across hosts)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def config_section(config: ml_collections.ConfigDict, name: str, cls):
    """`cls(**config[name])` with unknown keys and bad values reported as one ValueError naming the section."""
    if name not in config:
        raise ValueError(f"config has no section {name!r}")
    values = config[name].to_dict()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"config.{name}: unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"config.{name}: {error}") from None


TEXT_ENCODERS = ("hashed", "trainable")


def _text_conditioning(config: ml_collections.ConfigDict, cross_attention_dim: int):
    """(module or None, caption transform for the data pipeline, batch key, null caption array).

    "hashed": fixed word vectors (no parameters) computed in the input pipeline;
    "trainable": a WordTokenizer in the pipeline and a TextTransformer trained with the UNet.
    """
    text = config.get("text_encoder", ml_collections.ConfigDict({"kind": "hashed"}))
    kind = text.get("kind", "hashed")
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"config.text_encoder.kind must be one of {TEXT_ENCODERS}, got {kind!r}")
    length = config.data.text_len
    if kind == "hashed":
        encoder = HashedWordEncoder(length, cross_attention_dim)
        return None, encoder.encode, "text", encoder.encode([""])[0]
    tokenizer = WordTokenizer(text.vocab_size, length)
    module = TextTransformer(
        text.vocab_size, length, width=text.width, layers=text.layers, heads=text.heads, output_dim=cross_attention_dim
    )
    return module, tokenizer, "tokens", tokenizer([""])[0]


def _dataset(config: ml_collections.ConfigDict, caption_transform, caption_key: str):
    data = config.data
    settings = data.dataset.to_dict()
    if data.get("build_if_missing", False) and jax.process_index() == 0:
        build_moving_shapes(data.dir, **settings)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset built")
    source = load_moving_shapes(data.dir, "train", **settings)
    clip = ClipConfig(num_frames=data.frames, resolution=data.resolution, stride_range=tuple(data.stride_range), random_flip=data.random_flip)
    return training_dataset(
        source, clip, config.train.batch_size, seed=config.train.seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
        caption_transform=caption_transform,
        caption_key=caption_key,
    )


def _global_batch(local: dict, mesh, caption_key: str) -> dict[str, jax.Array]:
    arrays = {"latents": local["video"], caption_key: local[caption_key], "frame_stride": local["frame_stride"]}
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in arrays.items()}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until `config.train.steps` or a SIGTERM; returns the last logged metrics."""
    os.makedirs(workdir, exist_ok=True)
    cfg_train = config.train
    mesh = create_mesh(config.mesh.ici.to_dict(), config.mesh.get("dcn", ml_collections.ConfigDict()).to_dict())
    check_batch_size(cfg_train.batch_size, mesh, cfg_train.grad_accum_steps)
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())
    optim = config_section(config, "optim", OptimizerConfig)
    objective = config_section(config, "objective", ObjectiveConfig)
    optimizer = make_optimizer(optim)
    step_config = StepConfig(grad_accum_steps=cfg_train.grad_accum_steps, ema_decay=cfg_train.ema_decay)
    model = build_unet(
        unet_config(config),
        dtype=dtype(config.dtype),
        param_dtype=dtype(config.get("param_dtype", "float32")),
        remat_policy=cfg_train.remat_policy,
    )
    text_module, caption_transform, caption_key, null_text = _text_conditioning(config, model.config.cross_attention_dim)

    def init_params(rng):
        unet_rng, text_rng = jax.random.split(rng)
        unet = model.init(unet_rng, **dummy_inputs(model.config))["params"]
        if text_module is None:
            return unet
        return {"unet": unet, "text": text_module.init(text_rng, null_text[None])["params"]}

    init_rng, step_rng = jax.random.split(jax.random.key(cfg_train.seed))
    use_ema = step_config.ema_decay > 0
    abstract = abstract_train_state(init_params, optimizer, init_rng, use_ema)
    shardings = state_shardings(abstract, optimizer, mesh, rules)
    dataset = _dataset(config, caption_transform, caption_key)
    data_iter = iter(dataset)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg_train.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(abstract, shardings, data_iter)
        log.info("resumed from step %d", int(state.step))
    else:
        state = create_train_state(init_params, optimizer, init_rng, mesh, rules, use_ema)

    loss_fn = unet_loss_fn(model, make_schedule(**config.schedule.to_dict()), objective, text_module)
    train_step = make_train_step(loss_fn, optimizer, learning_rate_schedule(optim), shardings, mesh, rules, step_config)
    is_chief = jax.process_index() == 0
    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_chief else None
    writer = None
    if is_chief and config.get("tensorboard", True):
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    preemption = _Preemption()
    step = int(state.step)
    last: dict[str, Any] = {}
    bar = tqdm.tqdm(total=cfg_train.steps, initial=step, desc="training", unit="step", disable=not is_chief)
    window_start, window_steps = time.perf_counter(), 0
    saved_step = step

    def save():
        nonlocal saved_step
        if step != saved_step:
            checkpointer.save(step, state, data_iter, config.to_dict())
            saved_step = step

    try:
        while step < cfg_train.steps:
            batch = _global_batch(next(data_iter), mesh, caption_key)
            state, metrics = train_step(state, batch, null_text, step_rng)
            step += 1
            window_steps += 1
            bar.update(1)
            if step % cfg_train.log_every == 0 or step == cfg_train.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                metrics["steps_per_sec"] = window_steps / elapsed
                metrics["examples_per_sec"] = metrics["steps_per_sec"] * cfg_train.batch_size
                last = {"step": step, **metrics}
                window_start, window_steps = time.perf_counter(), 0
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if metrics_file is not None:
                    metrics_file.write(json.dumps(last) + "\n")
                    metrics_file.flush()
                if writer is not None:
                    for key, value in metrics.items():
                        writer.add_scalar(key, value, step)
            if step % cfg_train.checkpoint_every == 0 or step == cfg_train.steps:
                save()
            if preemption.should_stop():
                log.warning("SIGTERM: saving step %d and stopping", step)
                save()
                break
    finally:
        preemption.restore()
        checkpointer.close()
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    return last
