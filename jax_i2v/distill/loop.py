"""The MCM distillation loop: a frozen teacher run -> a few-step student, checkpointed and resumable
like pretraining (SIGTERM saves; the same command resumes with the same data and random stream).

The teacher is a pretraining workdir or params export (`config.teacher`); its saved config gives
the UNet, caption encoder, codec, schedule and data (`config.video_data` overrides data keys, e.g.
the dataset's quality). Outputs in WORKDIR: metrics.jsonl, TensorBoard events, checkpoints/ (the
`MCMTrainState`, the data position, the config) and student/: the student's merged params with the
teacher's config set to sample with the consistency sampler, which `launch/sample.py --checkpoint`
and `launch/evaluate.py --checkpoint` take.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_i2v.compilation_cache import configure_run_compilation
from jax_i2v.config_utils import attention_setting, config_from_dict, latent_codec, text_conditioning, unet_from_config
from jax_i2v.data.media_tfds import load_media_dataset
from jax_i2v.data.moving_shapes_tfds import build_moving_shapes_on_process_zero, load_moving_shapes
from jax_i2v.data.video_pipeline import clip_config
from jax_i2v.data.video_sources import video_sources
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.distill.backbone import CONFIG_NAME as BACKBONE_CONFIG_NAME
from jax_i2v.distill.backbone import ViT, ViTConfig, load_vit, read_vit_config
from jax_i2v.distill.data import FramesAsImages, distill_dataset
from jax_i2v.distill.step import MCMConfig, init_state, make_mcm_step, make_models, mcm_state_shardings, student_params
from jax_i2v.models.autoencoder_kl import KLCodec
from jax_i2v.models.clip import CLIPTextEncoder
from jax_i2v.parallel.hosts import replicated
from jax_i2v.parallel.mesh import batch_parallel_size, create_mesh
from jax_i2v.parallel.partitioning import batch_sharding, params_shardings, replicated_sharding, rules_from_config, with_shardings
from jax_i2v.params_io import export_params, load_for_inference
from jax_i2v.pipeline import SamplingConfig, noise_alpha_from_config
from jax_i2v.train.encoders import FrozenEncoders, encoders_from_config, place, step_captions
from jax_i2v.train.experiment import initial_params, trained_text_module
from jax_i2v.train.runner import RunSettings, run_steps
from jax_i2v.train.runtime import config_section
from jax_i2v.train.step import check_batch_size

log = logging.getLogger(__name__)
STUDENT_DIR = "student"
IMAGE_SOURCES = ("moving_shapes", "image_text")


@dataclasses.dataclass(frozen=True)
class DistillLoopConfig:
    """The `distill` section of an MCM config."""

    batch_size: int = 8  # global
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    time_limit_minutes: float = 0.0  # as pretraining's: 0 means none
    max_nonfinite_steps: int = 10  # as pretraining's: skipped non-finite steps in a row that stop the run
    gen_lr: float = 5e-6  # MCM's student learning rate
    disc_lr: float = 1e-4  # and its discriminator's

    def __post_init__(self):
        for name in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.steps, int) or self.steps < 0 or self.time_limit_minutes < 0:
            raise ValueError(f"steps and time_limit_minutes must be >= 0, got {self.steps!r}, {self.time_limit_minutes!r}")
        if not self.gen_lr > 0 or not self.disc_lr > 0:
            raise ValueError(f"learning rates must be positive, got {self.gen_lr}, {self.disc_lr}")


def build_backbone(settings: dict, seed: int) -> tuple[ViT, Any]:
    """kind "vit": a randomly initialised, frozen ViT of the given ViTConfig fields (CPU configs);
    "dinov2": a folder written by launch/convert_backbone.py (`dir`, optional `hooks`)."""
    settings = dict(settings)
    kind = settings.pop("kind", "vit")
    if kind == "dinov2":
        config, params = load_vit(settings["dir"], settings.get("hooks"))
        return ViT(config), params
    if kind != "vit":
        raise ValueError(f"config.backbone.kind must be 'vit' or 'dinov2', got {kind!r}")
    module = ViT(backbone_config(settings))
    return module, init_backbone(module, seed)


def init_backbone(module: ViT, seed: int) -> Any:
    """Random params of `module` (with `jax.eval_shape`, only their shapes)."""
    size = module.config.image_size
    return module.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))["params"]


def image_dataset_settings(settings: ml_collections.ConfigDict, teacher_data: ml_collections.ConfigDict) -> dict:
    """The moving-shapes settings of the discriminator's images: the teacher's `data.dataset`
    (its scenes, sizes and speeds), made clean, with `settings.dataset` (seed, counts...) on top."""
    return {
        **teacher_data.get("dataset", ml_collections.ConfigDict()).to_dict(),
        "quality": "clean",
        **settings.get("dataset", ml_collections.ConfigDict()).to_dict(),
    }


def _images(settings: ml_collections.ConfigDict, teacher_data: ml_collections.ConfigDict):
    """The discriminator's real images: frames of a moving-shapes build (see
    `image_dataset_settings`) or an image-text dataset built by launch/build_dataset.py (`dir`)."""
    source = settings.get("source", "moving_shapes")
    if source == "moving_shapes":
        dataset = image_dataset_settings(settings, teacher_data)
        build_moving_shapes_on_process_zero(settings.dir, **dataset)
        return FramesAsImages(load_moving_shapes(settings.dir, "train", **dataset), dataset["num_frames"])
    if source == "image_text":
        return load_media_dataset(settings.dir)
    raise ValueError(f"config.images.source must be one of {IMAGE_SOURCES}, got {source!r}")


def student_config(teacher_config: ml_collections.ConfigDict, timestep_scaling: float = 4.0) -> dict:
    """The teacher's config, sampling with the consistency sampler's defaults (keeping the
    teacher's noise, FrameInit and frame stride settings): the student's."""
    config = ml_collections.ConfigDict(teacher_config.to_dict())
    sampling = SamplingConfig.from_config(teacher_config).override(sampler="lcm", lcm_timestep_scaling=timestep_scaling)
    config.sampling = sampling.to_config_dict()
    return config.to_dict()


def mcm_config(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict) -> MCMConfig:
    """`config.mcm`, noising clips with the pyoco alpha the teacher was trained with unless
    `mcm.noise_alpha` is set."""
    mcm = config_section(config, "mcm", MCMConfig)
    if "noise_alpha" not in config.mcm:
        mcm = dataclasses.replace(mcm, noise_alpha=noise_alpha_from_config(teacher_config))
    return mcm


@dataclasses.dataclass
class DistillProgram:
    """What `run_steps` runs for a distillation, built from the config with the data open:
    `step(state, next_batch(), *extra_args)` takes device arrays only (extra_args: teacher,
    backbone params, frozen encoders' params, null caption, step key), so a step moves nothing
    between host and devices but this host's rows of the raw batch."""

    loop: DistillLoopConfig
    mesh: Any
    abstract_state: Any
    shardings: Any
    init_state: Callable[[], Any]
    step: Callable
    next_batch: Callable[[], dict[str, jax.Array]]
    extra_args: tuple
    data_iterator: Any
    export_student: Callable[[Any, str], None]  # (final state, folder)


@dataclasses.dataclass
class MCMStep:
    """A distillation step built for a teacher's config on a mesh, from params or only their
    shapes: `step(state, raw_batch, teacher, backbone_params, frozen_params, null_caption, rng)`
    (and `step.lower` with the same arguments)."""

    mcm: MCMConfig
    models: Any
    init_state: Callable  # (rng, teacher) -> MCMTrainState
    abstract_state: Any
    shardings: Any
    teacher_sharding: Any
    backbone_sharding: Any
    frozen_sharding: Any
    step: Callable


def apply_video_data(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict) -> None:
    """The MCM config's `video_data` keys override the teacher's `data` (in place)."""
    with teacher_config.unlocked():
        teacher_config.data.update(config.get("video_data", ml_collections.ConfigDict()).to_dict())


def mcm_unet(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict, mesh):
    """The teacher's architecture and dtypes, with the kernels this run asks for on `mesh`'s devices."""
    unet = unet_from_config(teacher_config, attention=attention_setting(config), platform=mesh.devices.flat[0].platform)
    log.info("attention kernels for %s: %s", mesh.devices.flat[0].platform, unet.attention_implementation.as_dict())
    return unet


def build_mcm_step(config, teacher_config, mesh, rules, unet, encoders, backbone, teacher, backbone_params) -> MCMStep:
    """The models, state shardings and jitted step of `config` (an MCM config) for a teacher of
    `teacher_config`; `teacher` and `backbone_params` may be arrays or ShapeDtypeStructs."""
    loop = config_section(config, "distill", DistillLoopConfig)
    mcm = mcm_config(config, teacher_config)
    data = teacher_config.data
    schedule = make_schedule(**teacher_config.schedule.to_dict())
    models = make_models(unet, schedule, teacher_config.objective.prediction_type, encoders, backbone, mcm, loop.gen_lr, loop.disc_lr)
    latent_shape = (data.frames, data.latent_size, data.latent_size, data.latent_channels)
    init = functools.partial(
        init_state, models=models, config=mcm, latent_shape=latent_shape, condition_dim=unet.config.cross_attention_dim
    )
    abstract = jax.eval_shape(init, jax.random.key(0), teacher)
    shardings = mcm_state_shardings(abstract, models, mesh, rules)
    teacher_sharding, backbone_sharding = params_shardings(teacher, mesh, rules), params_shardings(backbone_params, mesh, rules)
    frozen_sharding = params_shardings(encoders.abstract_params(), mesh, rules)
    step = make_mcm_step(
        models,
        mcm,
        mesh,
        shardings,
        teacher_sharding,
        backbone_sharding,
        frozen_sharding,
        rules,
        config.images.get("through_codec", False),
    )
    return MCMStep(mcm, models, init, abstract, shardings, teacher_sharding, backbone_sharding, frozen_sharding, step)


def distill_program(config: ml_collections.ConfigDict) -> DistillProgram:
    """The teacher, the frozen encoders and backbone placed on the mesh, the step and the batches."""
    loop = config_section(config, "distill", DistillLoopConfig)
    mesh = create_mesh(config.mesh.ici.to_dict(), config.mesh.get("dcn", ml_collections.ConfigDict()).to_dict())
    check_batch_size(loop.batch_size, mesh, 1)
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())
    # Read split over the mesh: each process reads its shards, no device holds the whole teacher.
    teacher_dict, teacher_all = load_for_inference(config.teacher, mesh=mesh, rules=rules)
    teacher_config = config_from_dict(teacher_dict)
    apply_video_data(config, teacher_config)
    data = teacher_config.data
    unet = mcm_unet(config, teacher_config, mesh)
    text = text_conditioning(teacher_config.get("text_encoder"), data.text_len, unet.config.cross_attention_dim)
    trained_text = text.module is not None  # the teacher's params are {"unet", "text"}
    teacher = teacher_all["unet"] if trained_text else teacher_all
    encoders, frozen, captions = _frozen_encoders(latent_codec(teacher_config), text, teacher_all, mesh, rules)
    del text  # a frozen encoder's weights live on in `frozen`, split over the mesh
    backbone, backbone_params = build_backbone(config.backbone.to_dict(), loop.seed)
    built = build_mcm_step(config, teacher_config, mesh, rules, unet, encoders, backbone, teacher, backbone_params)
    mcm, teacher_sharding = built.mcm, built.teacher_sharding
    init_rng, step_rng = jax.random.split(jax.random.key(loop.seed))
    teacher = jax.device_put(teacher, teacher_sharding)
    backbone_params = jax.device_put(backbone_params, built.backbone_sharding)
    images = config.images

    videos, _, clip_caption = video_sources(data)
    stream = distill_dataset(
        videos,
        _images(images, data),
        clip_config(data),
        backbone.config.image_size,
        loop.batch_size,
        loop.seed,
        mcm.disc_frames,
        tuple(images.get("crop_scale", (0.5, 1.0))),
        jax.process_index(),
        jax.process_count(),
        clip_caption,
        data.get("read_threads", 16),
        captions.caption_transform,
        captions.caption_key,
    )
    data_iter = iter(stream)
    real_key = "real_" + captions.caption_key

    def next_batch() -> dict[str, jax.Array]:
        """This host's rows -> the step's raw global batch (uint8 pixels, caption ids or
        embeddings); the discriminator's k real images per clip become rows of their own."""
        local = next(data_iter)
        arrays = {k: np.asarray(local[k]) for k in ("video", captions.caption_key, "frame_stride", "real_images", real_key)}
        for k in ("real_images", real_key):
            arrays[k] = arrays[k].reshape(-1, *arrays[k].shape[2:])
        return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, rules), v) for k, v in arrays.items()}

    def export_student(state, folder: str) -> None:
        # Merged where the state lives, split like the teacher: no process gathers the student.
        merge = jax.jit(functools.partial(student_params, config=mcm), out_shardings=teacher_sharding)
        with jax.set_mesh(mesh):
            student = merge(state, teacher)
        params = {**teacher_all, "unet": student} if trained_text else student
        export_params(folder, params, student_config(teacher_config, timestep_scaling=mcm.timestep_scaling))

    return DistillProgram(
        loop=loop,
        mesh=mesh,
        abstract_state=built.abstract_state,
        shardings=built.shardings,
        init_state=lambda: jax.jit(built.init_state, out_shardings=built.shardings)(init_rng, teacher),
        step=built.step,
        next_batch=next_batch,
        # The null caption and the key replicated once, so no step passes a host or one-device array.
        extra_args=(teacher, backbone_params, frozen, *replicated((captions.null_caption, step_rng), mesh)),
        data_iterator=data_iter,
        export_student=export_student,
    )


def backbone_config(settings: dict) -> ViTConfig:
    """The discriminator backbone's architecture without its weights: a "dinov2" folder's
    config.json (DINOv2 ViT-S/14 where the folder is absent), or the "vit" settings."""
    settings = dict(settings)
    if settings.pop("kind", "vit") == "dinov2":
        folder, hooks = settings.get("dir", ""), settings.get("hooks") or None
        if os.path.isfile(os.path.join(folder, BACKBONE_CONFIG_NAME)):
            return read_vit_config(folder, hooks)
        default = ViTConfig.dinov2_vits14()
        return default if hooks is None else dataclasses.replace(default, hooks=tuple(hooks))
    return ViTConfig(**{k: tuple(v) if k == "hooks" else v for k, v in settings.items()})


def abstract_mcm_step(config, teacher_config, mesh, per_device_batch: int = 1):
    """(MCMStep, its arguments as sharded ShapeDtypeStructs) for `step.lower`: the distillation
    step of `config` for a teacher of `teacher_config` (an experiment config) on `mesh`, from the
    configs alone: no weights, data or devices (a topology's mesh compiles it for that pod).

    The batch is what `distill_program`'s batches hold: per_device_batch x (data x fsdp) clips of
    uint8 pixels with their captions, and the discriminator's real images, k = mcm.disc_frames
    per clip."""
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())
    data = teacher_config.data
    unet = mcm_unet(config, teacher_config, mesh)
    text_module = trained_text_module(teacher_config)
    encoders = encoders_from_config(teacher_config)
    if text_module is not None:
        encoders = dataclasses.replace(encoders, caption_module=text_module)
    teacher_all = jax.eval_shape(lambda: initial_params(jax.random.key(0), unet, text_module))
    teacher = teacher_all["unet"] if text_module is not None else teacher_all
    backbone = ViT(backbone_config(config.backbone.to_dict()))
    image_size = backbone.config.image_size
    backbone_params = jax.eval_shape(lambda: init_backbone(backbone, 0))
    built = build_mcm_step(config, teacher_config, mesh, rules, unet, encoders, backbone, teacher, backbone_params)

    frozen = encoders.abstract_params()
    if text_module is not None:
        frozen = {**frozen, "text": teacher_all["text"]}
    latent = jax.ShapeDtypeStruct((1, data.latent_size, data.latent_size, data.latent_channels), jnp.float32)
    pixels = jax.eval_shape(encoders.decode_frames, frozen, latent).shape[1:3]
    if encoders.caption_module is not None:
        caption = jax.ShapeDtypeStruct((data.text_len,), jnp.int32)
    else:
        caption = jax.ShapeDtypeStruct((data.text_len, unet.config.cross_attention_dim), jnp.float32)
    b = per_device_batch * batch_parallel_size(mesh)
    k = b * built.mcm.disc_frames
    key = encoders.caption_key
    batch = {
        "video": ((b, data.frames, *pixels, 3), jnp.uint8),
        key: ((b, *caption.shape), caption.dtype),
        "frame_stride": ((b,), jnp.float32),
        "real_images": ((k, image_size, image_size, 3), jnp.uint8),
        "real_" + key: ((k, *caption.shape), caption.dtype),
    }
    batch = {n: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(mesh, len(shape), rules)) for n, (shape, dt) in batch.items()}

    everywhere = replicated_sharding(mesh)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    args = (
        with_shardings(built.abstract_state, built.shardings),
        batch,
        with_shardings(teacher, built.teacher_sharding),
        with_shardings(backbone_params, built.backbone_sharding),
        with_shardings(frozen, built.frozen_sharding),
        jax.ShapeDtypeStruct(caption.shape, caption.dtype, sharding=everywhere),
        jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=everywhere),
    )
    return built, args


def _frozen_encoders(codec, text, teacher_all, mesh, rules):
    """(encoders, their params placed on `mesh`, what the input pipeline does to captions).

    The caption encoder in the step: the teacher's trained one (frozen here; its params are the
    teacher's, already split over the mesh), or a frozen CLIP tower; none for host-side hashed
    embeddings. A KL codec's params go to the step; the codec object keeps none."""
    caption_module, text_params = None, None
    if text.module is not None:
        caption_module, text_params = text.module, teacher_all["text"]
    elif isinstance(text.fixed_encoder, CLIPTextEncoder):
        caption_module, text_params = text.fixed_encoder.module, text.fixed_encoder.params
    params = {}
    if isinstance(codec, KLCodec):
        params["vae"], codec = codec.params, dataclasses.replace(codec, params=None)
    if caption_module is not None:
        params["text"] = text_params
    encoders = FrozenEncoders(codec, caption_module)
    abstract = encoders.abstract_params()
    frozen = place(params, params_shardings(abstract, mesh, rules), abstract)
    captions = text if text.module is not None else step_captions(text, encoders)
    return encoders, frozen, captions


def distill(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils until `distill.steps`, the time limit or a SIGTERM; returns the last logged metrics."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    configure_run_compilation(config, workdir)
    program = distill_program(config)
    result = run_steps(
        workdir,
        RunSettings.of(program.loop),
        program.abstract_state,
        program.shardings,
        program.init_state,
        program.step,
        program.next_batch,
        extra_args=program.extra_args,
        data_iterator=program.data_iterator,
        config_dict=config.to_dict(),
        tensorboard=config.get("tensorboard", True),
        started=started,
        desc="distilling",
        postfix=lambda m: {"cd": f"{m['cd_loss']:.4f}", "d": f"{m['d_loss']:.3f}"},
    )
    program.export_student(result.state, os.path.join(workdir, STUDENT_DIR))
    return result.last_metrics
