"""One builder for the pretraining program: config + mesh -> model, state shapes and shardings,
loss, optimizer and the jitted step.

`launch/train.py` and `launch/aot_compile.py` both call `build_experiment`, so the step compiled
ahead of time for a TPU topology is the step that trains. Nothing here reads data or weights.

A config that reads clips (every data source but a latent cache) trains on raw batches: the step
encodes them with the frozen encoders (`jax_i2v.train.encoders`), whose params are its fifth
argument, sharded by the same rules as the UNet's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from jax_i2v.config_utils import text_conditioning, unet_from_config
from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.unet import REMAT_POLICIES, VideoUNet, dummy_inputs, map_mixers
from jax_i2v.parallel.partitioning import batch_sharding, params_shardings, replicated_sharding, rules_from_config, with_shardings
from jax_i2v.train.encoders import FrozenEncoders, encoders_from_config, reads_pixels
from jax_i2v.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jax_i2v.train.runtime import config_section
from jax_i2v.train.state import TrainState, abstract_train_state, state_shardings
from jax_i2v.train.step import StepConfig, check_batch_size, make_train_step, unet_loss_fn

log = logging.getLogger(__name__)
# Text kinds whose encoder trains with the UNet (batches carry token ids, not embeddings).
_TRAINED_TEXT_KINDS = ("trainable",)


def initial_params(rng: jax.Array, model: VideoUNet, text_module: Any, temporal_mixer_init: float = 1.0) -> Any:
    """Fresh params: the UNet's (its alpha mixers at `temporal_mixer_init`), and {"unet", "text"}
    when the caption encoder trains too."""
    unet_rng, text_rng = jax.random.split(rng)
    unet = model.init(unet_rng, **dummy_inputs(model.config))["params"]
    unet = map_mixers(lambda alpha: jnp.full_like(alpha, temporal_mixer_init), unet)
    if text_module is None:
        return unet
    tokens = jnp.zeros((1, text_module.max_length), jnp.int32)
    return {"unet": unet, "text": text_module.init(text_rng, tokens)["params"]}


def trained_text_module(config: ml_collections.ConfigDict):
    """The caption encoder that trains with the UNet, or None for frozen / parameter-free ones
    (found without loading a frozen encoder's weights)."""
    text_config = config.get("text_encoder") or {}
    if text_config.get("kind", "hashed") not in _TRAINED_TEXT_KINDS:
        return None
    return text_conditioning(text_config, config.data.text_len, config.unet.cross_attention_dim).module


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
    # A step with a non-finite loss or gradient norm is skipped; this many in a row stop the run.
    max_nonfinite_steps: int = 10
    # Initial value of every temporal alpha mixer (output = alpha * input + (1 - alpha) * temporal
    # layer). 1, the reference's, starts the temporal layers switched off, which suits inflating a
    # pretrained image UNet; from scratch, 0 (plain residual layers) lets frames learn their motion
    # from step 0 instead of waiting for Adam to walk each alpha down.
    temporal_mixer_init: float = 1.0
    # A diffusers image UNet folder (e.g. SD-2.1-base's unet/) whose spatial weights start a fresh
    # run, as the reference starts from SD ("": random init). Ignored when resuming.
    init_from_image_unet: str = ""

    def __post_init__(self):
        positive = (
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "grad_accum_steps",
            "sample_videos",
            "sample_steps",
            "max_nonfinite_steps",
        )
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


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The pretraining program for one config on one mesh."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: Any
    loop: LoopConfig
    optim: OptimizerConfig
    optimizer: optax.GradientTransformation
    step_config: StepConfig
    model: VideoUNet
    text_module: Any
    init_params: Callable[[jax.Array], Any]
    abstract_state: TrainState
    shardings: TrainState
    train_step: Callable
    # Raw batches: the encoders the step runs, their params' shapes and shardings ({} for
    # parameter-free ones). None / {} when batches hold cached latents.
    encoders: Optional[FrozenEncoders] = None
    abstract_frozen: Any = dataclasses.field(default_factory=dict)
    frozen_shardings: Any = dataclasses.field(default_factory=dict)

    @property
    def caption_key(self) -> str:
        """Token ids for a trained or in-step caption encoder, embeddings otherwise."""
        in_step = self.encoders is not None and self.encoders.caption_module is not None
        return "tokens" if self.text_module is not None or in_step else "text"

    def abstract_inputs(self, batch_size: Optional[int] = None, frames: Optional[int] = None):
        """The step's arguments after the state as sharded ShapeDtypeStructs, for
        `train_step.lower`: (batch, null caption, rng), and the frozen encoders' params when the
        batch holds raw clips ("video": (B, F, R, R, 3) uint8) instead of "latents"."""
        data, cfg = self.config.data, self.model.config
        batch_size = batch_size or self.loop.batch_size
        frames = frames or data.frames
        check_batch_size(batch_size, self.mesh, self.loop.grad_accum_steps)
        size, channels = data.latent_size, data.latent_channels
        if self.caption_key == "text":
            caption, null_caption = (
                ((batch_size, data.text_len, cfg.cross_attention_dim), jnp.float32),
                ((data.text_len, cfg.cross_attention_dim), jnp.float32),
            )
        else:
            caption, null_caption = ((batch_size, data.text_len), jnp.int32), ((data.text_len,), jnp.int32)
        if self.encoders is None:
            clips = ("latents", ((batch_size, frames, size, size, channels), jnp.float32))
        else:
            clips = ("video", ((batch_size, frames, data.resolution, data.resolution, 3), jnp.uint8))
        shapes = {
            clips[0]: clips[1],
            self.caption_key: caption,
            "frame_stride": ((batch_size,), jnp.float32),
        }
        batch = {
            key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(self.mesh, len(shape), self.rules))
            for key, (shape, dtype) in shapes.items()
        }
        replicated = replicated_sharding(self.mesh)
        null = jax.ShapeDtypeStruct(*null_caption, sharding=replicated)
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
        if self.encoders is None:
            return batch, null, rng
        return batch, null, rng, with_shardings(self.abstract_frozen, self.frozen_shardings)

    def sharded_abstract_state(self) -> TrainState:
        return with_shardings(self.abstract_state, self.shardings)


def build_experiment(
    config: ml_collections.ConfigDict, mesh: Mesh, text_module: Any = "from_config", encoders: Any = "from_config"
) -> Experiment:
    """The model (attention kernels resolved for the mesh's platform), state shapes and shardings,
    loss, optimizer and step of `config` on `mesh`.

    text_module: the trained caption encoder module or None; by default found from the config.
    encoders: the `FrozenEncoders` of raw batches or None (cached latents); by default from the
    config (from the VAE's and CLIP's config.json, no weights).
    """
    loop = config_section(config, "train", LoopConfig)
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())
    optim = config_section(config, "optim", OptimizerConfig)
    optimizer = make_optimizer(optim)
    step_config = StepConfig(grad_accum_steps=loop.grad_accum_steps, ema_decay=loop.ema_decay)
    platform = mesh.devices.flat[0].platform
    model = unet_from_config(config, platform=platform, remat_policy=loop.remat_policy)
    log.info("attention kernels for %s: %s", platform, model.attention_implementation.as_dict())
    if text_module == "from_config":
        text_module = trained_text_module(config)
    init_params = functools.partial(initial_params, model=model, text_module=text_module, temporal_mixer_init=loop.temporal_mixer_init)
    init_rng = jax.random.split(jax.random.key(loop.seed))[0]
    abstract = abstract_train_state(init_params, optimizer, init_rng, step_config.ema_decay > 0)
    shardings = state_shardings(abstract, optimizer, mesh, rules)
    objective = config_section(config, "objective", ObjectiveConfig)
    loss_fn = unet_loss_fn(model, make_schedule(**config.schedule.to_dict()), objective, text_module)
    if encoders == "from_config":
        encoders = encoders_from_config(config) if reads_pixels(config) else None
    abstract_frozen = {} if encoders is None else encoders.abstract_params()
    frozen_shardings = params_shardings(abstract_frozen, mesh, rules)
    train_step = make_train_step(
        loss_fn, optimizer, learning_rate_schedule(optim), shardings, mesh, rules, step_config, encoders, frozen_shardings
    )
    return Experiment(
        config=config,
        mesh=mesh,
        rules=rules,
        loop=loop,
        optim=optim,
        optimizer=optimizer,
        step_config=step_config,
        model=model,
        text_module=text_module,
        init_params=init_params,
        abstract_state=abstract,
        shardings=shardings,
        train_step=train_step,
        encoders=encoders,
        abstract_frozen=abstract_frozen,
        frozen_shardings=frozen_shardings,
    )
