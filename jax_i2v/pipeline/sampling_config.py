"""`SamplingConfig`: the one place sampling settings and their defaults live.

Everything that samples reads it: experiment configs (their `sampling` section is one, see
`to_config_dict`), `I2VPipeline` (its `sampling` field and keyword overrides), the launchers'
`--sampling.KEY=VALUE` flags (`jax_i2v.cli.define_sampling_flags`), evaluation and training
previews. Precedence, lowest first: the defaults of the sampler (`SamplingConfig.defaults`), a
config's `sampling` section (`SamplingConfig.from_config`), explicit overrides (`override`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_i2v.diffusion.ddim import DDIMConfig, check_num_steps, padded_timesteps
from jax_i2v.diffusion.frameinit import FILTER_TYPES, FrameInitConfig, low_pass_filter
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.diffusion.sampler import SamplingOptions

SAMPLERS = ("ddim", "lcm")
FRAMEINIT_CHOICES = FILTER_TYPES + ("none",)
# The consistency sampler of distilled students: few steps, and the guidance is distilled in.
_CONSISTENCY_DEFAULTS = dict(steps=4, text_guidance=1.0)
# What shapes the initial noise (a student samples from its teacher's) and the training's frame
# rate: kept when the sampler changes (see `override`).
_KEPT_ON_SAMPLER_CHANGE = (
    "noise_alpha",
    "frame_stride",
    "frameinit",
    "frameinit_ds",
    "frameinit_dt",
    "frameinit_order",
    "frameinit_noise_level",
)
# The frame stride of a model without a training config to take it from.
DEFAULT_FRAME_STRIDE = 3.0


def _setting(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How videos are sampled; the defaults are the release's inference settings (DDIM, 50 steps).
    Each field's `help` metadata says what it sets (the launchers' --sampling.KEY flags show it)."""

    sampler: str = _setting("ddim", "ddim, or lcm: the multistep consistency sampler of distilled students")
    steps: int = _setting(50, "denoising steps")
    text_guidance: float = _setting(7.5, "text guidance scale (1: off)")
    image_guidance: float = _setting(1.0, "first-frame guidance scale; > 1 switches to 3-way text + image guidance")
    eta: float = _setting(0.0, "DDIM eta: 0 deterministic, 1 DDPM-like")
    noise_alpha: Optional[float] = _setting(None, "pyoco alpha of the initial noise, 0: independent frames (unset: the training's, else 1)")
    fresh_noise_alpha: Optional[float] = _setting(None, "pyoco alpha of the noise drawn at each step, eta > 0 or lcm (unset: noise_alpha)")
    frame_stride: Optional[float] = _setting(None, "frame-rate condition (unset: the middle of the training's data.stride_range, else 3)")
    frameinit: str = _setting("gaussian", f"FrameInit low-pass filter, one of {', '.join(FRAMEINIT_CHOICES)}")
    frameinit_ds: float = _setting(0.25, "FrameInit spatial cutoff")
    frameinit_dt: float = _setting(0.25, "FrameInit temporal cutoff")
    frameinit_order: int = _setting(4, "FrameInit Butterworth order")
    frameinit_noise_level: int = _setting(850, "FrameInit noise level, per mille of the training timesteps")
    lcm_timestep_scaling: float = _setting(4.0, "the consistency sampler's boundary scaling where it replaces DDIM (MCM trains with 4)")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampling.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise ValueError(f"sampling.steps must be a positive integer, got {self.steps!r}")
        for name in ("text_guidance", "image_guidance", "eta", "frameinit_ds", "frameinit_dt"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"sampling.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("noise_alpha", "fresh_noise_alpha"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise ValueError(f"sampling.{name} must be >= 0 or None (the default), got {getattr(self, name)!r}")
        if self.frame_stride is not None and not self.frame_stride > 0:
            raise ValueError(f"sampling.frame_stride must be > 0 or None (the training's), got {self.frame_stride!r}")
        if self.frameinit not in FRAMEINIT_CHOICES:
            raise ValueError(f"sampling.frameinit must be one of {FRAMEINIT_CHOICES}, got {self.frameinit!r}")
        if self.frameinit_order < 1 or not 0 <= self.frameinit_noise_level <= 1000:
            raise ValueError(
                f"sampling.frameinit_order must be >= 1 and frameinit_noise_level in [0, 1000], "
                f"got {self.frameinit_order} and {self.frameinit_noise_level}"
            )
        if not self.lcm_timestep_scaling > 0:
            raise ValueError(f"sampling.lcm_timestep_scaling must be > 0, got {self.lcm_timestep_scaling!r}")

    @classmethod
    def defaults(cls, sampler: str = "ddim") -> SamplingConfig:
        """The defaults of `sampler`: the consistency sampler takes 4 steps without guidance."""
        return cls(sampler=sampler, **(_CONSISTENCY_DEFAULTS if sampler == "lcm" else {}))

    @classmethod
    def for_scheduler(cls, scheduler: DDIMConfig | LCMConfig) -> SamplingConfig:
        """The defaults of the sampler `scheduler` configures (a diffusers folder's scheduler)."""
        return cls.defaults("lcm" if isinstance(scheduler, LCMConfig) else "ddim")

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]], **overrides) -> SamplingConfig:
        """`overrides` (None values skipped) over the experiment config's `sampling` section over
        the defaults of its sampler; noise alpha and frame stride unset there are the training's."""
        section = {} if config is None else _section(config)
        settings = cls.defaults(section.get("sampler", "ddim")).override(**section)
        if config is not None:
            trained = dict(noise_alpha=(config.get("objective") or {}).get("noise_alpha"), frame_stride=frame_stride_from_config(config))
            settings = settings.override(**{k: v for k, v in trained.items() if getattr(settings, k) is None})
        return settings.override(**overrides)

    def override(self, **changes) -> SamplingConfig:
        """These settings with `changes` (None values skipped). A change of sampler starts from the
        new sampler's defaults, keeping the initial noise's settings (noise alpha, FrameInit) and
        the frame stride."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown sampling settings {sorted(unknown)}; known: {', '.join(f.name for f in dataclasses.fields(self))}")
        changes = {k: v for k, v in changes.items() if v is not None}
        sampler = changes.get("sampler", self.sampler)
        base = self
        if sampler != self.sampler:
            base = dataclasses.replace(self.defaults(sampler), **{k: getattr(self, k) for k in _KEPT_ON_SAMPLER_CHANGE})
        return dataclasses.replace(base, **changes)

    def to_config_dict(self) -> ml_collections.ConfigDict:
        """These settings as an experiment config's `sampling` section; None fields become typed
        placeholders so that `--config.sampling.noise_alpha=0.5` parses."""
        hints = typing.get_type_hints(type(self))
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = ml_collections.config_dict.placeholder(typing.get_args(hints[field.name])[0]) if value is None else value
        return ml_collections.ConfigDict(values)

    @property
    def frameinit_config(self) -> Optional[FrameInitConfig]:
        if self.frameinit == "none":
            return None
        return FrameInitConfig(self.frameinit, self.frameinit_ds, self.frameinit_dt, self.frameinit_order, self.frameinit_noise_level)

    def scheduler_for(self, scheduler: DDIMConfig | LCMConfig) -> DDIMConfig | LCMConfig:
        """The scheduler `sampler` asks for on the noise schedule of `scheduler` (a model's)."""
        if self.sampler == "lcm" and not isinstance(scheduler, LCMConfig):
            return LCMConfig.with_schedule_of(scheduler, timestep_scaling=self.lcm_timestep_scaling)
        if self.sampler == "ddim" and isinstance(scheduler, LCMConfig):
            return DDIMConfig(**scheduler.schedule_settings())
        return scheduler

    def options(self, scheduler: DDIMConfig | LCMConfig, num_frames: int, latent_height: int, latent_width: int) -> SamplingOptions:
        """The compiled sampler's traced numbers for `scheduler` (see `scheduler_for`) and a chunk
        of (num_frames, latent_height, latent_width) latents."""
        if isinstance(scheduler, LCMConfig):
            timesteps = scheduler.padded_timesteps(self.steps)
        else:
            check_num_steps(self.steps, scheduler)
            timesteps = padded_timesteps(self.steps, scheduler)
        frameinit = self.frameinit_config or FrameInitConfig()
        return SamplingOptions(
            timesteps=jnp.asarray(timesteps),
            num_steps=jnp.int32(self.steps),
            text_scale=jnp.float32(self.text_guidance),
            image_scale=jnp.float32(self.image_guidance),
            eta=jnp.float32(self.eta),
            fresh_noise_alpha=jnp.float32(self.noise_alpha_or_default if self.fresh_noise_alpha is None else self.fresh_noise_alpha),
            use_frameinit=jnp.bool_(self.frameinit_config is not None),
            frameinit_mask=jnp.asarray(low_pass_filter(num_frames, latent_height, latent_width, frameinit)),
            frameinit_timestep=jnp.int32(frameinit.timestep(scheduler.num_train_timesteps)),
        )

    @property
    def noise_alpha_or_default(self) -> float:
        """The initial noise's alpha: None (no training config to take it from) is 1."""
        return 1.0 if self.noise_alpha is None else float(self.noise_alpha)

    @property
    def frame_stride_or_default(self) -> float:
        return DEFAULT_FRAME_STRIDE if self.frame_stride is None else float(self.frame_stride)


def _section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's `sampling` section as a dict, unset (None) entries dropped."""
    section = config.get("sampling") or {}
    return {key: section[key] for key in section.keys() if section[key] is not None}


def noise_alpha_from_config(config: Mapping[str, Any]) -> float:
    """The pyoco alpha an experiment config trains with: its samplers mix noise across frames alike."""
    return float((config.get("objective") or {}).get("noise_alpha", 1.0))


def frame_stride_from_config(config: Mapping[str, Any]) -> Optional[float]:
    """The middle of the frame strides a config trains on (`data.stride_range`); None without one."""
    stride_range = (config.get("data") or {}).get("stride_range")
    if stride_range is None:
        return None
    low, high = stride_range
    return (low + high) / 2


def scheduler_from_config(config: Mapping[str, Any]) -> DDIMConfig | LCMConfig:
    """DDIM with the noise schedule and prediction type an experiment config trains with, or the
    consistency sampler on the same schedule when its `sampling.sampler` is "lcm" (students)."""
    prediction_type = (config.get("objective") or {}).get("prediction_type", "epsilon")
    ddim = DDIMConfig(**(config.get("schedule") or {}), prediction_type=prediction_type)
    return SamplingConfig.from_config(config).scheduler_for(ddim)


def check_guidance_was_trained(config: Mapping[str, Any], sampling: SamplingConfig) -> None:
    """Raises if a guidance scale > 1 needs a prediction the run's training never dropped its
    condition for: guidance extrapolates from the caption-free or image-free prediction."""
    objective = config.get("objective") or {}
    for name, scale, dropout in (
        ("text_guidance", sampling.text_guidance, "text_dropout"),
        ("image_guidance", sampling.image_guidance, "first_frame_dropout"),
    ):
        if scale > 1.0 and objective.get(dropout) == 0.0:
            raise ValueError(f"{name} {scale} needs a model trained with objective.{dropout} > 0; this one had 0")
