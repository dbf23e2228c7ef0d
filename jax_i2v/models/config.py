"""UNet configuration mirroring the reference's diffusers `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)
FIRST_FRAME_CONDITION_MODES = ("none", "concat", "input_only", "conv2d")
TEMPORAL_POSITION_EMBEDDINGS = ("rotary", "sinusoidal")

# TemporalResnetBlock hard-codes 32 groups and eps 1e-6 (blocks.py:225-313).
TEMPORAL_NORM_GROUPS = 32
TEMPORAL_NORM_EPS = 1e-6
# Width of the never-used `conv3ds.*.time_emb_proj` Linear in the reference.
DEAD_TEMPORAL_TEMB_DIM = 512
# Bucket count of the never-used T5-style `rotary_bias` in the reference.
DEAD_ROTARY_BIAS_BUCKETS = 32

# diffusers options this implementation does not support: key -> the only value accepted.
_FIXED_DIFFUSERS_OPTIONS = {
    "center_input_sample": False,
    "only_cross_attention": False,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}
# Keys that carry no architecture information.
_IGNORED_DIFFUSERS_KEYS = {
    "_class_name",
    "_diffusers_version",
    "_use_default_values",
    "_name_or_path",
    "addition_embed_type_num_heads",
    "use_temporal_attention",
}
REFERENCE_CLASS_NAME = "VideoLDMUNet3DConditionModel"


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of the ConsistI2V video UNet; field names follow diffusers.

    `attention_head_dim` is, as in SD-2.x diffusers configs, the number of
    spatial attention heads per block (not the head width).
    `n_frames` is informational only: the model runs any frame count.
    """

    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    use_linear_projection: bool = True
    upcast_attention: bool = False
    sample_size: int = 64
    # ConsistI2V additions.
    use_temporal: bool = True
    n_frames: int = 16
    n_temp_heads: int = 8
    first_frame_condition_mode: str = "concat"
    augment_temporal_attention: bool = True
    temp_pos_embedding: str = "rotary"
    use_frame_stride_condition: bool = True

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        heads = self.attention_head_dim
        if isinstance(heads, int):
            heads = (heads,) * len(self.block_out_channels)
        object.__setattr__(self, "attention_head_dim", tuple(int(h) for h in heads))
        self.validate()

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def conditions_on_first_frame(self) -> bool:
        """Whether the first-frame latent is prepended on the time axis."""
        return self.first_frame_condition_mode != "none"

    @property
    def spatial_first_frame_attention(self) -> bool:
        return self.first_frame_condition_mode in ("concat", "conv2d")

    def validate(self) -> None:
        def fail(msg):
            raise ValueError(f"UNetConfig: {msg}")

        n = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == len(self.attention_head_dim) == n):
            fail(
                "down_block_types, up_block_types, attention_head_dim and block_out_channels must have "
                f"the same length, got {len(self.down_block_types)}, {len(self.up_block_types)}, "
                f"{len(self.attention_head_dim)}, {n}"
            )
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                fail(f"unsupported down block type {t!r}; expected one of {DOWN_BLOCK_TYPES}")
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                fail(f"unsupported up block type {t!r}; expected one of {UP_BLOCK_TYPES}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            fail(f"unsupported mid block type {self.mid_block_type!r}; expected one of {MID_BLOCK_TYPES}")
        if self.first_frame_condition_mode not in FIRST_FRAME_CONDITION_MODES:
            fail(f"first_frame_condition_mode={self.first_frame_condition_mode!r}; expected one of {FIRST_FRAME_CONDITION_MODES}")
        if self.temp_pos_embedding not in TEMPORAL_POSITION_EMBEDDINGS:
            fail(f"temp_pos_embedding={self.temp_pos_embedding!r}; expected one of {TEMPORAL_POSITION_EMBEDDINGS}")
        if self.layers_per_block < 1:
            fail(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.downsample_padding not in (0, 1):
            fail(f"downsample_padding must be 0 or 1, got {self.downsample_padding}")
        for i, (c, h) in enumerate(zip(self.block_out_channels, self.attention_head_dim)):
            if c % self.norm_num_groups:
                fail(f"block {i}: channels {c} not divisible by norm_num_groups={self.norm_num_groups}")
            if h < 1 or c % h:
                fail(f"block {i}: channels {c} not divisible by its spatial head count {h}")
            if self.use_temporal:
                if c % TEMPORAL_NORM_GROUPS:
                    fail(
                        f"block {i}: channels {c} must be a multiple of {TEMPORAL_NORM_GROUPS} "
                        "(the temporal ResNet GroupNorm uses 32 groups)"
                    )
                if self.n_temp_heads < 1 or c % self.n_temp_heads:
                    fail(f"block {i}: channels {c} not divisible by n_temp_heads={self.n_temp_heads}")
                if self.temp_pos_embedding == "rotary" and c % 4:
                    fail(f"block {i}: rotary temporal attention needs channels divisible by 4, got {c}")
                if self.temp_pos_embedding == "sinusoidal" and c % 2:
                    fail(f"block {i}: sinusoidal temporal positions need even channels, got {c}")

    # diffusers config.json round trip -------------------------------------------------

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "UNetConfig":
        """Builds a config from a diffusers-layout `config.json` dict.

        Options this implementation does not support must hold their diffusers
        default; unknown keys are an error, so nothing is silently ignored.
        """
        return from_diffusers_dict(cls, cfg, _FIXED_DIFFUSERS_OPTIONS, _IGNORED_DIFFUSERS_KEYS, "UNet")

    def to_diffusers(self) -> dict[str, Any]:
        """The config.json dict the reference `VideoLDMUNet3DConditionModel` accepts."""
        out = to_diffusers_dict(self, REFERENCE_CLASS_NAME, _FIXED_DIFFUSERS_OPTIONS)
        # Unused without an addition embedding, but diffusers writes it into every UNet config.
        out["addition_embed_type_num_heads"] = 64
        return out


def from_diffusers_dict(cls, cfg: Mapping[str, Any], fixed: Mapping[str, Any], ignored, what: str):
    """`cls(**fields)` from a diffusers `config.json` dict: keys that are dataclass fields are
    taken (lists as tuples), keys in `fixed` must hold the one value supported, keys in `ignored`
    are dropped, anything else is an error naming the key."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs, unknown, unsupported = {}, [], []
    for key, value in cfg.items():
        if key in fields:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in fixed:
            if value != fixed[key]:
                unsupported.append(f"{key}={value!r} (supported: {fixed[key]!r})")
        elif key not in ignored:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{what} config.json has unknown keys: {sorted(unknown)}")
    if unsupported:
        raise ValueError(f"{what} config.json uses unsupported options: {unsupported}")
    return cls(**kwargs)


def to_diffusers_dict(config, class_name: str, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `from_diffusers_dict`: `_class_name`, every field (tuples as lists) and the
    fixed options at their supported values."""
    out = {"_class_name": class_name}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    out.update(fixed)
    return out
