"""`I2VPipeline`: first images + captions -> videos, sampled as one batch in one compiled call,
with FrameInit, camera motion and autoregressive long videos.

    pipe = I2VPipeline.from_pretrained("/data/ConsistI2V")
    frames = pipe(["a.png", "b.png"], ["a dog runs", "a cat sits"], num_videos_per_prompt=2, seed=[1, 2, 3, 4])
    # frames: (4, T, H, W, 3) float32 in [0, 1]; T = F + (chunks - 1)(F - 1)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from jax_i2v import media
from jax_i2v.config_utils import config_from_dict, latent_codec, text_conditioning, unet_from_config
from jax_i2v.diffusion import progress
from jax_i2v.diffusion.camera_motion import CAMERA_MOTIONS, camera_motion_frames
from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.diffusion.guidance import guidance_mode
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.diffusion.sampler import initial_noise, sample_chunk
from jax_i2v.models.unet import VideoUNet, apply_unet
from jax_i2v.models.vae import LatentCodec, PixelSpace
from jax_i2v.parallel.hosts import host_copy, replicated, wait_for_all_processes
from jax_i2v.params_io import load_for_inference
from jax_i2v.pipeline.batch import Images, Prompts, Seeds, chunk_keys, video_keys, video_rows, video_seeds
from jax_i2v.pipeline.diffusers_folder import load_components, save_components
from jax_i2v.pipeline.sampling_config import SamplingConfig, scheduler_from_config
from jax_i2v.text import TextEncoder

FIRST_FRAME_ENCODINGS = ("sample", "mode")


@functools.partial(jax.jit, static_argnames=("unet", "scheduler", "guidance", "report_progress"))
def _sample_chunk(
    unet,
    params,
    first_frame,
    static_video,
    text,
    null_text,
    frame_stride,
    noise,
    step_keys,
    options,
    *,
    scheduler,
    guidance,
    report_progress,
):
    return sample_chunk(
        functools.partial(apply_unet, unet, params),
        first_frame,
        static_video,
        text,
        null_text,
        frame_stride,
        noise,
        step_keys,
        options,
        scheduler,
        guidance,
        condition_on_first_frame=unet.config.conditions_on_first_frame,
        report_progress=report_progress,
    )


_initial_noise = jax.jit(initial_noise, static_argnames="shape")


@dataclasses.dataclass
class I2VPipeline:
    """A video UNet with its params, a caption encoder, a latent codec, a noise schedule and the
    sampling settings calls start from.

    text_encoder may be None when callers pass embeddings directly. `vae` defaults to pixel space.
    `sampling` defaults to `SamplingConfig.for_scheduler(scheduler)`.
    `mesh`: the mesh `params` are split over, possibly across processes (e.g. a training state's);
    the sampler's other inputs are then replicated over it and every process samples the same
    videos without gathering the params.
    """

    unet: VideoUNet
    params: Any
    text_encoder: Optional[TextEncoder] = None
    vae: LatentCodec = dataclasses.field(default_factory=PixelSpace)
    scheduler: DDIMConfig | LCMConfig = dataclasses.field(default_factory=DDIMConfig)
    sampling: Optional[SamplingConfig] = None
    mesh: Optional[Mesh] = None

    def __post_init__(self):
        channels = self.unet.config.in_channels
        if self.vae.latent_channels != channels:
            raise ValueError(
                f"the UNet takes {channels}-channel latents but the codec ({type(self.vae).__name__}) gives "
                f"{self.vae.latent_channels}; latent-space models need their VAE"
            )
        if self.sampling is None:
            self.sampling = SamplingConfig.for_scheduler(self.scheduler)

    @classmethod
    def from_config(cls, config, params, attention: Optional[str] = None, **kwargs) -> I2VPipeline:
        """From an experiment config (configs/*.py) and params as trained with it: the UNet's, or
        {"unet": ..., "text": ...} when the caption encoder is trained too. Samples as the
        config's `sampling` section says; `attention` overrides the config's `model.attention`."""
        unet = unet_from_config(config, attention=attention)
        text = text_conditioning(config.get("text_encoder"), config.data.text_len, unet.config.cross_attention_dim)
        kwargs.setdefault("vae", latent_codec(config))
        kwargs.setdefault("scheduler", scheduler_from_config(config))
        kwargs.setdefault("sampling", SamplingConfig.from_config(config))
        if text.module is None:
            return cls(unet, params, text_encoder=text.encoder(), **kwargs)
        # The trained caption encoder runs eagerly on this host: its (small) params are gathered.
        return cls(unet, params["unet"], text_encoder=text.encoder(host_copy(params["text"])), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str, use_ema: bool = True, **kwargs) -> tuple[I2VPipeline, Any]:
        """(pipeline, experiment config) from a training workdir, one of its checkpoints, or a
        params export (see `jax_i2v.params_io.load_for_inference`)."""
        config, params = load_for_inference(path, use_ema)
        config = config_from_dict(config)
        return cls.from_config(config, params, **kwargs), config

    @classmethod
    def from_pretrained(cls, folder: str, dtype=jnp.float32, decode_chunk: int = 8, **unet_kwargs) -> I2VPipeline:
        """From a diffusers pipeline folder (the released ConsistI2V's layout, see
        `jax_i2v.pipeline.diffusers_folder`); samples with its scheduler's defaults."""
        return cls(**load_components(folder, dtype=dtype, decode_chunk=decode_chunk, **unet_kwargs))

    def save_pretrained(self, folder: str) -> None:
        """Writes the diffusers pipeline folder `from_pretrained` and the reference code read."""
        save_components(folder, self.unet.config, self.params, self.text_encoder, self.vae, self.scheduler)

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae.downsample_factor

    @property
    def default_num_frames(self) -> int:
        return self.unet.config.n_frames or 16

    def resolve_sampling(self, sampling: Optional[SamplingConfig] = None, **settings) -> SamplingConfig:
        """`settings` (SamplingConfig fields; None skipped) over `sampling`, else the pipeline's."""
        return (sampling or self.sampling).override(**settings)

    def _embed(self, prompts: list[str], embeddings, pair_of_row: np.ndarray, what: str) -> jax.Array:
        """(rows, L, D): the prompts' embeddings, or `embeddings` given per pair ((L, D), (1 or pairs, L, D))."""
        if embeddings is None:
            if self.text_encoder is None:
                raise ValueError(f"no text encoder: pass {what} embeddings")
            return jnp.asarray(self.text_encoder.encode(prompts), jnp.float32)
        embeddings = jnp.asarray(embeddings, jnp.float32)
        if embeddings.ndim == 2:
            embeddings = embeddings[None]
        dim, pairs = self.unet.config.cross_attention_dim, int(pair_of_row[-1]) + 1
        if embeddings.ndim != 3 or embeddings.shape[-1] != dim:
            raise ValueError(f"{what} embeddings must be (L, {dim}) or (B, L, {dim}), got {embeddings.shape}")
        if embeddings.shape[0] not in (1, pairs):
            raise ValueError(f"{what} embeddings have batch {embeddings.shape[0]}, expected 1 or {pairs} (one per image and prompt)")
        return embeddings[pair_of_row if embeddings.shape[0] > 1 else np.zeros_like(pair_of_row)]

    def encode_frames(self, pixels_uint8: np.ndarray, keys: Optional[jax.Array]) -> jax.Array:
        """(B, N, H, W, 3) uint8 -> (B, N, h, w, C) latents: video i's a posterior sample drawn
        with keys[i] alone, or the posterior mode (its mean) with `keys` None."""
        pixels = jnp.asarray(media.to_model_range(pixels_uint8))
        if keys is None:
            b, n = pixels.shape[:2]
            latents = self.vae.encode(pixels.reshape((b * n,) + pixels.shape[2:]), None)
            return jnp.asarray(latents, jnp.float32).reshape((b, n) + latents.shape[1:])
        return jnp.asarray(jax.vmap(self.vae.encode)(pixels, keys), jnp.float32)

    def decode(self, latents: jax.Array) -> np.ndarray:
        """(B, T, h, w, C) latents -> (B, T, H, W, 3) float32 frames in [0, 1]. All frames go to the
        codec in one call; the VAE bounds its memory by decoding `decode_chunk` frames at a time."""
        b, t = latents.shape[:2]
        frames = np.asarray(self.vae.decode(jnp.reshape(latents, (b * t,) + latents.shape[2:])))
        return np.clip(frames.reshape((b, t) + frames.shape[1:]) / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)

    def _latent_shape(self, num_frames: Optional[int], height: Optional[int], width: Optional[int]) -> tuple[int, int, int, int]:
        """(F, h, w, C) of a chunk's latents, checked."""
        num_frames, height, width = num_frames or self.default_num_frames, height or self.default_size, width or self.default_size
        factor = self.vae.downsample_factor
        if num_frames < 2:
            raise ValueError(f"need num_frames >= 2, got {num_frames}")
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of the codec's factor {factor}, got {height}x{width}")
        return num_frames, height // factor, width // factor, self.vae.latent_channels

    def prepare_latents(
        self,
        num_videos: int,
        seed: Seeds = 0,
        *,
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        sampling: Optional[SamplingConfig] = None,
        **settings,
    ) -> jax.Array:
        """The initial noise a call with these videos' seeds draws (what `latents=` takes):
        (num_videos, F, h, w, C) float32, channels-last, pyoco-mixed across frames."""
        noise_keys, _ = chunk_keys(video_keys(video_seeds(seed, num_videos))[1], 0)
        shape = self._latent_shape(num_frames, height, width)
        return _initial_noise(noise_keys, shape, self.resolve_sampling(sampling, **settings).noise_alpha_or_default)

    def sample_latents(
        self,
        images: Images,
        prompts: Prompts = "",
        negative_prompts: Prompts = "",
        *,
        num_videos_per_prompt: int = 1,
        seed: Seeds = 0,
        latents: Optional[jax.Array] = None,
        first_frame_sample: Literal["sample", "mode"] = "sample",
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        camera_motion: Optional[str] = None,
        chunks: int = 1,
        text_embeddings=None,
        null_text_embeddings=None,
        sampling: Optional[SamplingConfig] = None,
        show_progress: bool = True,
        **settings,
    ) -> jax.Array:
        """Latents (B, T, h, w, C) of the videos, T = F + (chunks - 1)(F - 1), sampled as one batch.

        images / prompts / negative_prompts: one each or one per video pair (broadcast); each pair
        gives `num_videos_per_prompt` videos, pair 0's first. seed: video i's seed is `seed + i`,
        or `seed[i]` for a list (one per video); all of video i's random draws come from it, so
        it is the same video in any batch. latents: the first chunk's initial noise instead of the
        one the seeds draw, (B, F, h, w, C) as `prepare_latents` gives. first_frame_sample:
        "sample" encodes the first frame as a posterior sample (video i's key), "mode" as the
        posterior's mode (deterministic; the same for codecs without noise).
        num_frames (F) counts the conditioning frame (default: the UNet's n_frames, else 16).
        Chunk k > 0 is conditioned on the last latent of chunk k - 1 (no VAE round trip) and gets
        fresh noise; camera motion shapes chunk 0 only. Sampling settings: `sampling` (default
        the pipeline's) with `settings` overriding its fields (steps=, text_guidance=, ...).
        """
        options_config = self.resolve_sampling(sampling, **settings)
        shape = self._latent_shape(num_frames, height, width)
        num_frames, factor = shape[0], self.vae.downsample_factor
        height, width = shape[1] * factor, shape[2] * factor
        cfg = self.unet.config
        if chunks < 1:
            raise ValueError(f"need chunks >= 1, got {chunks}")
        if first_frame_sample not in FIRST_FRAME_ENCODINGS:
            raise ValueError(f"first_frame_sample must be one of {FIRST_FRAME_ENCODINGS}, got {first_frame_sample!r}")
        if camera_motion is not None and camera_motion not in CAMERA_MOTIONS:
            raise ValueError(f"camera_motion must be one of {CAMERA_MOTIONS} or None, got {camera_motion!r}")
        if camera_motion is not None and options_config.frameinit_config is None:
            raise ValueError("camera motion works through FrameInit: choose a sampling.frameinit filter")
        if options_config.image_guidance > 1.0 and not cfg.conditions_on_first_frame:
            raise ValueError("image guidance needs a model that conditions on the first frame")
        scheduler = options_config.scheduler_for(self.scheduler)
        options = options_config.options(scheduler, *shape[:3])
        guidance = guidance_mode(options_config.text_guidance, options_config.image_guidance)

        rows = video_rows(images, prompts, negative_prompts, num_videos_per_prompt, seed)
        batch = len(rows)
        if latents is not None and tuple(latents.shape) != (batch,) + shape:
            raise ValueError(f"latents must be the initial noise, (videos, F, h, w, C) = {(batch,) + shape}, got {tuple(latents.shape)}")
        encode_keys, sampling_keys = video_keys(rows.seeds)
        pixels = [media.load_image(image) for image in rows.images]
        if camera_motion is None:
            frames = np.stack([media.resize_and_center_crop(p, height, width)[None] for p in pixels])
        else:
            frames = np.stack([camera_motion_frames(p, camera_motion, num_frames, height, width) for p in pixels])
        encoded = self.encode_frames(frames, encode_keys if first_frame_sample == "sample" else None)
        first_frame = encoded[:, :1]
        camera_video = encoded if camera_motion is not None else None
        text = self._embed(rows.prompts, text_embeddings, rows.pair_of_row, "text")
        null_text = self._embed(rows.negative_prompts, null_text_embeddings, rows.pair_of_row, "null text")
        if text.shape[1:] != null_text.shape[1:]:
            raise ValueError(f"text {text.shape} and null text {null_text.shape} embeddings differ in shape")
        stride = jnp.full((batch,), options_config.frame_stride_or_default, jnp.float32)

        pieces = [first_frame] if cfg.conditions_on_first_frame else []
        bar = tqdm.tqdm(total=options_config.steps * chunks, desc="denoising", unit="step", disable=not show_progress)
        statics = dict(scheduler=scheduler, guidance=guidance, report_progress=show_progress)
        with bar, progress.on_step(lambda step, total: bar.update(1)):
            for chunk in range(chunks):
                noise_keys, step_keys = chunk_keys(sampling_keys, chunk)
                if chunk == 0 and latents is not None:
                    noise = jnp.asarray(latents, jnp.float32)
                else:
                    noise = _initial_noise(noise_keys, shape, options_config.noise_alpha_or_default)
                static_video = camera_video if chunk == 0 and camera_video is not None else jnp.broadcast_to(first_frame, (batch,) + shape)
                inputs = (first_frame, static_video, text, null_text, stride, noise, step_keys, options)
                chunk_latents = self._run_sampler(inputs, statics)
                # Unconditioned models regenerate the conditioning frame in later chunks: drop it.
                pieces.append(chunk_latents if (cfg.conditions_on_first_frame or chunk == 0) else chunk_latents[:, 1:])
                first_frame = chunk_latents[:, -1:]
            jax.effects_barrier()
        return jnp.concatenate(pieces, axis=1)

    def _run_sampler(self, inputs: tuple, statics: dict) -> jax.Array:
        """One chunk through the compiled sampler, on this process's devices or over `mesh`."""
        if self.mesh is None:
            return jax.block_until_ready(_sample_chunk(self.unet, self.params, *inputs, **statics))
        inputs = replicated(inputs, self.mesh)
        # Every process compiles before any runs the sampler's collectives.
        compiled = _sample_chunk.lower(self.unet, self.params, *inputs, **statics).compile()
        wait_for_all_processes("sampler compiled")
        return jnp.asarray(host_copy(compiled(self.params, *inputs)))

    def __call__(self, images: Images, prompts: Prompts = "", negative_prompts: Prompts = "", **kwargs) -> np.ndarray:
        """Frames (B, T, H, W, 3) float32 in [0, 1]; see `sample_latents` for the options."""
        return self.decode(self.sample_latents(images, prompts, negative_prompts, **kwargs))
