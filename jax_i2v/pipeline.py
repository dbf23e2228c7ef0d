"""`I2VPipeline`: first image + caption -> video frames, with FrameInit, camera motion and
autoregressive long videos.

    pipe = I2VPipeline(unet, params, text_encoder=HashedWordEncoder(8, 32))
    frames = pipe("first.png", "a red circle moves left", num_frames=8, num_steps=25)
    # frames: (num_videos, T, H, W, 3) float32 in [0, 1]; T = F + (chunks - 1)(F - 1)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from jax_i2v import media
from jax_i2v.config_utils import config_from_dict, latent_codec, text_conditioning, unet_from_config
from jax_i2v.convert import (
    load_text_encoder,
    load_unet,
    load_vae,
    parse_config_file,
    save_text_encoder,
    save_unet,
    save_vae,
)
from jax_i2v.diffusion import progress
from jax_i2v.diffusion.camera_motion import CAMERA_MOTIONS, camera_motion_frames
from jax_i2v.diffusion.ddim import DDIMConfig, check_num_steps, padded_timesteps
from jax_i2v.diffusion.frameinit import FILTER_TYPES, FrameInitConfig, low_pass_filter
from jax_i2v.diffusion.guidance import guidance_mode
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.diffusion.sampler import SamplingOptions, sample_chunk
from jax_i2v.models.autoencoder_kl import KLCodec
from jax_i2v.models.clip import CLIPTextEncoder
from jax_i2v.models.unet import VideoUNet, apply_unet
from jax_i2v.models.vae import LatentCodec, PixelSpace
from jax_i2v.parallel.hosts import host_copy, replicated, wait_for_all_processes
from jax_i2v.params_io import load_for_inference
from jax_i2v.text import TextEncoder

MODEL_INDEX_NAME = "model_index.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
PIPELINE_FILES = (MODEL_INDEX_NAME, "unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The released checkpoint's pipeline class and components (the reference repository's module paths).
MODEL_INDEX = {
    "_class_name": "ConditionalAnimationPipeline",
    "unet": ["consisti2v.models.videoldm_unet", "VideoLDMUNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


@functools.partial(jax.jit, static_argnames=("unet", "scheduler", "guidance", "report_progress"))
def _sample_chunk(
    unet, params, first_frame, static_video, text, null_text, frame_stride, rng, options, *, scheduler, guidance, report_progress
):
    return sample_chunk(
        functools.partial(apply_unet, unet, params),
        first_frame,
        static_video,
        text,
        null_text,
        frame_stride,
        rng,
        options,
        scheduler,
        guidance,
        condition_on_first_frame=unet.config.conditions_on_first_frame,
        report_progress=report_progress,
    )


@dataclasses.dataclass
class I2VPipeline:
    """A video UNet with its params, a caption encoder and a latent codec.

    text_encoder may be None when callers pass embeddings directly. `vae` defaults to pixel space.
    `mesh`: the mesh `params` are split over, possibly across processes (e.g. a training state's);
    the sampler's other inputs are then replicated over it and every process samples the same
    videos without gathering the params.
    """

    unet: VideoUNet
    params: Any
    text_encoder: Optional[TextEncoder] = None
    vae: LatentCodec = dataclasses.field(default_factory=PixelSpace)
    scheduler: DDIMConfig | LCMConfig = dataclasses.field(default_factory=DDIMConfig)
    mesh: Optional[Mesh] = None

    @classmethod
    def from_config(cls, config, params, attention: Optional[str] = None, **kwargs) -> "I2VPipeline":
        """From an experiment config (configs/*.py) and params as trained with it: the UNet's, or
        {"unet": ..., "text": ...} when the caption encoder is trained too. `attention` overrides
        the config's `model.attention`."""
        unet = unet_from_config(config, attention=attention)
        text = text_conditioning(config.get("text_encoder"), config.data.text_len, unet.config.cross_attention_dim)
        kwargs.setdefault("vae", latent_codec(config))
        kwargs.setdefault("scheduler", scheduler_from_config(config))
        if text.module is None:
            return cls(unet, params, text_encoder=text.encoder(), **kwargs)
        # The trained caption encoder runs eagerly on this host: its (small) params are gathered.
        return cls(unet, params["unet"], text_encoder=text.encoder(host_copy(params["text"])), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str, use_ema: bool = True, **kwargs) -> tuple["I2VPipeline", Any]:
        """(pipeline, experiment config) from a training workdir, one of its checkpoints, or a
        params export (see `jax_i2v.params_io.load_for_inference`)."""
        config, params = load_for_inference(path, use_ema)
        config = config_from_dict(config)
        return cls.from_config(config, params, **kwargs), config

    @classmethod
    def from_pretrained(cls, folder: str, dtype=jnp.float32, decode_chunk: int = 8, **unet_kwargs) -> "I2VPipeline":
        """From a diffusers pipeline folder: model_index.json, unet/, vae/, text_encoder/,
        tokenizer/ and scheduler/ (the released ConsistI2V's layout). Sampling then uses the
        schedule in scheduler/scheduler_config.json (DDIM, or the consistency sampler for an
        `LCMScheduler` config: a distilled student). Nothing is downloaded."""
        missing = [os.path.join(folder, name) for name in PIPELINE_FILES if not os.path.exists(os.path.join(folder, name))]
        if missing:
            raise FileNotFoundError(f"not a diffusers pipeline folder, missing: {', '.join(missing)}")
        path = functools.partial(os.path.join, folder)
        unet, params = load_unet(path("unet"), dtype=dtype, **unet_kwargs)
        scheduler = parse_config_file(path("scheduler", SCHEDULER_CONFIG_NAME), _scheduler_from_diffusers)
        return cls(
            unet,
            params,
            text_encoder=load_text_encoder(path("text_encoder"), path("tokenizer"), dtype=dtype),
            vae=load_vae(path("vae"), decode_chunk=decode_chunk, dtype=dtype),
            scheduler=scheduler,
        )

    def save_pretrained(self, folder: str) -> None:
        """Writes the diffusers pipeline layout `from_pretrained` and the reference code read
        (safetensors weights, the reference's keys, shapes and config keys)."""
        if not isinstance(self.text_encoder, CLIPTextEncoder) or not isinstance(self.vae, KLCodec):
            raise ValueError(
                "the diffusers layout holds a CLIP text encoder and an AutoencoderKL; this pipeline has "
                f"{type(self.text_encoder).__name__} and {type(self.vae).__name__}"
            )
        path = functools.partial(os.path.join, folder)
        save_unet(path("unet"), self.unet.config, self.params)
        save_vae(path("vae"), self.vae)
        save_text_encoder(path("text_encoder"), self.text_encoder)
        self.text_encoder.tokenizer.save(path("tokenizer"))
        os.makedirs(path("scheduler"), exist_ok=True)
        with open(path("scheduler", SCHEDULER_CONFIG_NAME), "w") as f:
            json.dump(self.scheduler.to_diffusers(), f, indent=2)
        with open(path(MODEL_INDEX_NAME), "w") as f:  # last: a folder with an index is complete
            scheduler_class = self.scheduler.to_diffusers()["_class_name"]
            json.dump({**MODEL_INDEX, "scheduler": ["diffusers", scheduler_class]}, f, indent=2)

    def __post_init__(self):
        channels = self.unet.config.in_channels
        if self.vae.latent_channels != channels:
            raise ValueError(
                f"the UNet takes {channels}-channel latents but the codec ({type(self.vae).__name__}) gives "
                f"{self.vae.latent_channels}; latent-space models need their VAE"
            )

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae.downsample_factor

    def _embed(self, prompt, embeddings, batch: int, what: str) -> jax.Array:
        if embeddings is None:
            if self.text_encoder is None:
                raise ValueError(f"no text encoder: pass {what} embeddings")
            embeddings = self.text_encoder.encode([prompt])
        embeddings = jnp.asarray(embeddings, jnp.float32)
        if embeddings.ndim == 2:
            embeddings = embeddings[None]
        if embeddings.ndim != 3 or embeddings.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(f"{what} embeddings must be (L, {self.unet.config.cross_attention_dim}) or (B, L, D), got {embeddings.shape}")
        if embeddings.shape[0] not in (1, batch):
            raise ValueError(f"{what} embeddings have batch {embeddings.shape[0]}, expected 1 or {batch}")
        return jnp.broadcast_to(embeddings, (batch,) + embeddings.shape[1:])

    def encode_frames(self, pixels_uint8: np.ndarray, rng: jax.Array) -> jax.Array:
        """(N, H, W, 3) uint8 -> (N, h, w, C) latents."""
        return jnp.asarray(self.vae.encode(media.to_model_range(pixels_uint8), rng), jnp.float32)

    def decode(self, latents: jax.Array) -> np.ndarray:
        """(B, T, h, w, C) latents -> (B, T, H, W, 3) float32 frames in [0, 1]. All frames go to the
        codec in one call; the VAE bounds its memory by decoding `decode_chunk` frames at a time."""
        b, t = latents.shape[:2]
        frames = np.asarray(self.vae.decode(jnp.reshape(latents, (b * t,) + latents.shape[2:])))
        return np.clip(frames.reshape((b, t) + frames.shape[1:]) / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)

    def sample_latents(
        self,
        image: media.ImageLike,
        prompt: str = "",
        negative_prompt: str = "",
        *,
        text_embeddings=None,
        null_text_embeddings=None,
        num_frames: int = 16,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_steps: int = 50,
        text_guidance: float = 7.5,
        image_guidance: float = 1.0,
        eta: float = 0.0,
        frame_stride: float = 3,
        noise_alpha: float = 1.0,
        fresh_noise_alpha: Optional[float] = None,
        frameinit: Optional[FrameInitConfig] = FrameInitConfig(),
        camera_motion: Optional[str] = None,
        chunks: int = 1,
        num_videos: int = 1,
        seed: int = 0,
        show_progress: bool = True,
    ) -> jax.Array:
        """Latents (num_videos, T, h, w, C) of the video, T = F + (chunks - 1)(F - 1).

        num_frames (F) counts the conditioning frame. Chunk k > 0 is conditioned on the last latent
        of chunk k - 1 (no VAE round trip) and gets fresh noise; camera motion shapes chunk 0 only.
        noise_alpha mixes the initial noise across frames (pyoco), fresh_noise_alpha the noise drawn
        at each step (eta > 0 or the consistency sampler; default: noise_alpha).
        """
        cfg = self.unet.config
        height = height or self.default_size
        width = width or self.default_size
        factor = self.vae.downsample_factor
        if num_frames < 2 or chunks < 1 or num_videos < 1:
            raise ValueError(f"need num_frames >= 2, chunks >= 1, num_videos >= 1; got {num_frames}, {chunks}, {num_videos}")
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of the codec's factor {factor}, got {height}x{width}")
        fresh_noise_alpha = noise_alpha if fresh_noise_alpha is None else fresh_noise_alpha
        if noise_alpha < 0 or fresh_noise_alpha < 0:
            raise ValueError(f"noise alphas must be >= 0, got {noise_alpha} and {fresh_noise_alpha}")
        if camera_motion is not None and camera_motion not in CAMERA_MOTIONS:
            raise ValueError(f"camera_motion must be one of {CAMERA_MOTIONS} or None, got {camera_motion!r}")
        if camera_motion is not None and frameinit is None:
            raise ValueError("camera motion works through FrameInit: pass a FrameInitConfig")
        if image_guidance > 1.0 and not cfg.conditions_on_first_frame:
            raise ValueError("image guidance needs a model that conditions on the first frame")
        timesteps = _padded_timesteps(self.scheduler, num_steps)
        guidance = guidance_mode(text_guidance, image_guidance)

        key = jax.random.key(seed)
        encode_key, sample_key = jax.random.split(key)
        pixels = media.load_image(image)
        if camera_motion is None:
            first_frame = self.encode_frames(media.resize_and_center_crop(pixels, height, width)[None], encode_key)
            camera_video = None
        else:
            camera_video = self.encode_frames(camera_motion_frames(pixels, camera_motion, num_frames, height, width), encode_key)
            first_frame = camera_video[:1]
        latent_shape = first_frame.shape[1:]
        first_frame = jnp.broadcast_to(first_frame[:, None], (num_videos, 1) + latent_shape)
        text = self._embed(prompt, text_embeddings, num_videos, "text")
        null_text = self._embed(negative_prompt, null_text_embeddings, num_videos, "null text")
        if text.shape[1:] != null_text.shape[1:]:
            raise ValueError(f"text {text.shape} and null text {null_text.shape} embeddings differ in shape")

        frameinit_cfg = frameinit or FrameInitConfig()
        options = SamplingOptions(
            timesteps=jnp.asarray(timesteps),
            num_steps=jnp.int32(num_steps),
            text_scale=jnp.float32(text_guidance),
            image_scale=jnp.float32(image_guidance),
            eta=jnp.float32(eta),
            noise_alpha=jnp.float32(noise_alpha),
            fresh_noise_alpha=jnp.float32(fresh_noise_alpha),
            use_frameinit=jnp.bool_(frameinit is not None),
            frameinit_mask=jnp.asarray(low_pass_filter(num_frames, *latent_shape[:2], frameinit_cfg)),
            frameinit_timestep=jnp.int32(frameinit_cfg.timestep(self.scheduler.num_train_timesteps)),
        )
        stride = jnp.full((num_videos,), frame_stride, jnp.float32)
        pieces = [first_frame] if cfg.conditions_on_first_frame else []
        bar = tqdm.tqdm(total=num_steps * chunks, desc="denoising", unit="step", disable=not show_progress)
        with bar, progress.on_step(lambda step, total: bar.update(1)):
            for chunk in range(chunks):
                if chunk == 0 and camera_video is not None:
                    static_video = jnp.broadcast_to(camera_video[None], (num_videos,) + camera_video.shape)
                else:
                    static_video = jnp.broadcast_to(first_frame, (num_videos, num_frames) + latent_shape)
                inputs = (first_frame, static_video, text, null_text, stride, jax.random.fold_in(sample_key, chunk), options)
                if self.mesh is not None:
                    inputs = replicated(inputs, self.mesh)
                statics = dict(scheduler=self.scheduler, guidance=guidance, report_progress=show_progress)
                if self.mesh is None:
                    latents = _sample_chunk(self.unet, self.params, *inputs, **statics)
                else:  # every process compiles before any runs the sampler's collectives
                    compiled = _sample_chunk.lower(self.unet, self.params, *inputs, **statics).compile()
                    wait_for_all_processes("sampler compiled")
                    latents = compiled(self.params, *inputs)
                latents = jnp.asarray(host_copy(latents)) if self.mesh is not None else jax.block_until_ready(latents)
                # Unconditioned models regenerate the conditioning frame in later chunks: drop it.
                pieces.append(latents if (cfg.conditions_on_first_frame or chunk == 0) else latents[:, 1:])
                first_frame = latents[:, -1:]
            jax.effects_barrier()
        return jnp.concatenate(pieces, axis=1)

    def __call__(self, image: media.ImageLike, prompt: str = "", negative_prompt: str = "", **kwargs) -> np.ndarray:
        """Frames (num_videos, T, H, W, 3) float32 in [0, 1]; see `sample_latents` for the options."""
        return self.decode(self.sample_latents(image, prompt, negative_prompt, **kwargs))

    def sample_each(self, images: Sequence[media.ImageLike], prompts: Sequence[str], *, seed: int = 0, **kwargs) -> np.ndarray:
        """One video per (image, prompt) pair, with seeds seed, seed + 1, ...: (N, T, H, W, 3) in [0, 1]."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        videos = [self(image, prompt, seed=seed + i, **kwargs) for i, (image, prompt) in enumerate(zip(images, prompts))]
        return np.concatenate(videos)


def _scheduler_from_diffusers(settings: dict) -> DDIMConfig | LCMConfig:
    kind = LCMConfig if settings.get("_class_name") == "LCMScheduler" else DDIMConfig
    return kind.from_diffusers(settings)


def _padded_timesteps(scheduler: DDIMConfig | LCMConfig, num_steps: int) -> np.ndarray:
    if isinstance(scheduler, LCMConfig):
        return scheduler.padded_timesteps(num_steps)
    check_num_steps(num_steps, scheduler)
    return padded_timesteps(num_steps, scheduler)


def scheduler_from_config(config) -> DDIMConfig | LCMConfig:
    """DDIM with the noise schedule and prediction type an experiment config trains with, or the
    consistency sampler on the same schedule when `sampling.sampler` is "lcm" (distilled students)."""
    prediction_type = config.get("objective", {}).get("prediction_type", "epsilon")
    ddim = DDIMConfig(**config.get("schedule", {}), prediction_type=prediction_type)
    sampling = config.get("sampling", {})
    if sampling.get("sampler", "ddim") == "lcm":
        return LCMConfig.with_schedule_of(ddim, timestep_scaling=sampling.get("lcm_timestep_scaling", 4.0))
    return ddim


def noise_alpha_from_config(config) -> float:
    """The pyoco alpha an experiment config trains with: its samplers mix noise across frames alike."""
    return float(config.get("objective", {}).get("noise_alpha", 1.0))


def frame_stride_from_config(config) -> float:
    """The middle of the frame strides a config trains on (`data.stride_range`)."""
    low, high = config.data.stride_range
    return (low + high) / 2


# What a run samples with where its config's `sampling` section is silent: the release's inference
# settings, with fewer steps. Each key is a flag of launch/evaluate.py and launch/sample.py; None
# noise alphas mean the training's (`noise_alpha`) and the initial noise's (`fresh_noise_alpha`).
SAMPLING_DEFAULTS = {
    "steps": 25,
    "text_guidance": 7.5,
    "image_guidance": 1.0,
    "eta": 0.0,
    "noise_alpha": None,
    "fresh_noise_alpha": None,
    "frameinit": "gaussian",
    "frameinit_ds": 0.25,
    "frameinit_dt": 0.25,
    "frameinit_order": 4,
    "frameinit_noise_level": 850,
}


def sampling_settings(config, overrides: Optional[dict] = None, defaults: dict = SAMPLING_DEFAULTS) -> dict:
    """The settings a run samples with: `overrides` that are not None (command-line flags) over the
    config's `sampling` section (if a config is given) over `defaults`."""
    settings = dict(defaults)
    if config is not None:
        settings.update({k: v for k, v in config.get("sampling", {}).items() if k in settings})
    settings.update({k: v for k, v in (overrides or {}).items() if k in settings and v is not None})
    if settings["noise_alpha"] is None:
        settings["noise_alpha"] = noise_alpha_from_config(config) if config is not None else 1.0
    if settings["fresh_noise_alpha"] is None:
        settings["fresh_noise_alpha"] = settings["noise_alpha"]
    if settings["frameinit"] not in FILTER_TYPES + ("none",):
        raise ValueError(f"sampling.frameinit must be one of {FILTER_TYPES + ('none',)}, got {settings['frameinit']!r}")
    return settings


def sampling_kwargs(settings: dict) -> dict:
    """`I2VPipeline` keyword arguments for `sampling_settings`."""
    frameinit = None
    if settings["frameinit"] != "none":
        frameinit = FrameInitConfig(
            settings["frameinit"],
            d_s=settings["frameinit_ds"],
            d_t=settings["frameinit_dt"],
            order=settings["frameinit_order"],
            noise_level=settings["frameinit_noise_level"],
        )
    return dict(
        num_steps=settings["steps"],
        text_guidance=settings["text_guidance"],
        image_guidance=settings["image_guidance"],
        eta=settings["eta"],
        noise_alpha=settings["noise_alpha"],
        fresh_noise_alpha=settings["fresh_noise_alpha"],
        frameinit=frameinit,
    )


def check_guidance_was_trained(config, text_guidance: float, image_guidance: float) -> None:
    """Raises if a guidance scale > 1 needs a prediction the run's training never dropped its
    condition for: guidance extrapolates from the caption-free or image-free prediction."""
    objective = config.get("objective", {})
    for name, scale, dropout in (
        ("text_guidance", text_guidance, "text_dropout"),
        ("image_guidance", image_guidance, "first_frame_dropout"),
    ):
        if scale > 1.0 and objective.get(dropout) == 0.0:
            raise ValueError(f"{name} {scale} needs a model trained with objective.{dropout} > 0; this one had 0")


def save_videos(frames: np.ndarray, prefix: str, formats: Sequence[str] = media.VIDEO_FORMATS, fps: float = 8.0) -> list[str]:
    """Writes each video of a (B, T, H, W, 3) batch as `{prefix}_{i}.{fmt}` (or `{prefix}.{fmt}` for B = 1)."""
    paths = []
    for i, video in enumerate(frames):
        stem = prefix if len(frames) == 1 else f"{prefix}_{i}"
        paths += [media.write_video(f"{stem}.{fmt}", video, fps) for fmt in formats]
    return paths
