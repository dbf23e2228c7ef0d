"""The ConsistI2V video UNet (reference `VideoLDMUNet3DConditionModel`) as Flax Linen modules.

Layout is channels-last video, (B, F, H, W, C). The frame count is read from the
input, so the same params run any number of frames.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jax_i2v.models.attention import AttentionKernels, resolve_attention, rotary_frequencies
from jax_i2v.models.config import UNetConfig
from jax_i2v.models.layers import (
    Downsample2D,
    ResnetBlock2D,
    TemporalResnetBlock,
    TimestepEmbedding,
    Upsample2D,
    frame_group_norm,
    resize_nearest,
    timestep_sinusoid,
)
from jax_i2v.models.transformer import Transformer
from jax_i2v.parallel.partitioning import VIDEO_ACTIVATION_AXES

Dtype = Any
# "block": recompute each UNet block in the backward pass; "dots_saveable": keep only matmul
# outputs without batch dimensions (weights-stationary products), recompute the rest.
REMAT_POLICIES = ("none", "block", "dots_saveable")


def _rematerialised(block_cls, policy: str, static_argnums=()):
    if policy == "none":
        return block_cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {policy!r}")
    jax_policy = None if policy == "block" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nn.remat(block_cls, policy=jax_policy, static_argnums=static_argnums)


def _constrain(x):
    """Block-boundary activation sharding (a no-op outside a mesh + logical-rules context)."""
    return nn.with_logical_constraint(x, VIDEO_ACTIVATION_AXES)


class UNetBlock(nn.Module):
    """Shared config plumbing for the down, mid and up blocks."""

    config: UNetConfig
    out_channels: int
    heads: int
    has_attention: bool
    attention_implementation: AttentionKernels = AttentionKernels()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def resnet(self, name):
        cfg = self.config
        return ResnetBlock2D(self.out_channels, cfg.norm_num_groups, cfg.norm_eps, self.dtype, self.param_dtype, name=name)

    def temporal_conv(self, name):
        return TemporalResnetBlock(self.dtype, self.param_dtype, name=name)

    def transformer(self, name, temporal):
        cfg = self.config
        return Transformer(
            heads=cfg.n_temp_heads if temporal else self.heads,
            groups=cfg.norm_num_groups,
            temporal=temporal,
            # Spatial: keys over [frame || frame 0]; temporal: the 8-neighbour frame-0 window.
            first_frame=cfg.augment_temporal_attention if temporal else cfg.spatial_first_frame_attention,
            position_embedding=cfg.temp_pos_embedding,
            implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def layer(self, i, x, temb, context):
        """ResNet -> temporal ResNet -> spatial transformer -> temporal transformer."""
        use_temporal = self.config.use_temporal
        x = self.resnet(f"resnets_{i}")(x, temb)
        if use_temporal:
            x = self.temporal_conv(f"conv3ds_{i}")(x)
        if self.has_attention:
            x = self.transformer(f"attentions_{i}", temporal=False)(x, context)
            if use_temporal:
                x = self.transformer(f"tempo_attns_{i}", temporal=True)(x, context)
        return x

    def replace_first_frame(self, x, first_frame_latents):
        """conv2d mode: frame 0's hidden state becomes a 1x1 conv of the resized first-frame latent."""
        if self.config.first_frame_condition_mode != "conv2d":
            return x
        first = resize_nearest(first_frame_latents[:, 0], x.shape[2], x.shape[3])
        first = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="first_frame_conv")(first)
        return x.at[:, 0].set(first.astype(x.dtype))


class DownBlock(UNetBlock):
    add_downsample: bool = True

    @nn.compact
    def __call__(self, x, temb, context, first_frame_latents):
        x = self.replace_first_frame(x, first_frame_latents)
        skips = []
        for i in range(self.config.layers_per_block):
            x = self.layer(i, x, temb, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.config.downsample_padding, self.dtype, self.param_dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class MidBlock(UNetBlock):
    """ResNet, temporal ResNet, spatial transformer, ResNet, temporal ResNet: no temporal attention."""

    @nn.compact
    def __call__(self, x, temb, context):
        x = self.resnet("resnets_0")(x, temb)
        if self.config.use_temporal:
            x = self.temporal_conv("conv3ds_0")(x)
        x = self.transformer("attentions_0", temporal=False)(x, context)
        x = self.resnet("resnets_1")(x, temb)
        if self.config.use_temporal:
            x = self.temporal_conv("conv3ds_1")(x)
        return x


class UpBlock(UNetBlock):
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips, temb, context, first_frame_latents, upsample_size):
        x = self.replace_first_frame(x, first_frame_latents)
        for i in range(self.config.layers_per_block + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.layer(i, x, temb, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, self.dtype, self.param_dtype, name="upsamplers_0")(x, upsample_size)
        return x


def _per_video(name, value, batch):
    """A scalar or (B,) array -> (B,) array."""
    value = jnp.asarray(value)
    if value.ndim == 0:
        return jnp.broadcast_to(value, (batch,))
    if value.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {value.shape}")
    return value


class VideoUNet(nn.Module):
    """ConsistI2V video UNet.

    `__call__(sample, timesteps, encoder_hidden_states, first_frame_latents, frame_stride)`:
      sample: (B, F-1, H, W, C) noisy latents of frames 2..F ((B, F, H, W, C) in mode "none").
      timesteps, frame_stride: scalars or (B,) arrays, one per video.
      encoder_hidden_states: (B, L, cross_attention_dim) text embeddings.
      first_frame_latents: (B, 1, H, W, C) clean first-frame latent (unused in mode "none").
    Returns the prediction for `sample`'s frames, same shape, in the compute dtype.
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_implementation: AttentionKernels = AttentionKernels()
    remat_policy: str = "none"

    def _check_inputs(self, sample, encoder_hidden_states, first_frame_latents, frame_stride):
        cfg = self.config
        if not isinstance(self.attention_implementation, AttentionKernels):
            raise ValueError(f"attention_implementation must be resolved (build_unet), got {self.attention_implementation!r}")
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, F, H, W, C) channels-last, got shape {sample.shape}")
        b, f, h, w, c = sample.shape
        if c != cfg.in_channels:
            raise ValueError(f"sample has {c} channels, the model expects in_channels={cfg.in_channels}")
        total_frames = f + 1 if cfg.conditions_on_first_frame else f
        if total_frames < 2:
            raise ValueError(f"need at least 2 frames including the conditioning frame, got {total_frames} (sample shape {sample.shape})")
        if cfg.conditions_on_first_frame:
            if first_frame_latents is None:
                raise ValueError(f"first_frame_condition_mode={cfg.first_frame_condition_mode!r} needs first_frame_latents")
            if first_frame_latents.shape != (b, 1, h, w, c):
                raise ValueError(f"first_frame_latents must have shape {(b, 1, h, w, c)}, got {first_frame_latents.shape}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states must be (B={b}, L, D), got {encoder_hidden_states.shape}")
        if encoder_hidden_states.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states width {encoder_hidden_states.shape[-1]} != cross_attention_dim={cfg.cross_attention_dim}"
            )
        if cfg.use_frame_stride_condition and frame_stride is None:
            raise ValueError("use_frame_stride_condition is on: frame_stride is required")

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, first_frame_latents=None, frame_stride=None):
        cfg = self.config
        self._check_inputs(sample, encoder_hidden_states, first_frame_latents, frame_stride)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block_kw = dict(config=cfg, attention_implementation=self.attention_implementation, **kw)
        batch = sample.shape[0]

        x = sample.astype(self.dtype)
        first = None
        if cfg.conditions_on_first_frame:
            first = first_frame_latents.astype(self.dtype)
            x = jnp.concatenate([first, x], axis=1)
        context = encoder_hidden_states.astype(self.dtype)

        # Every frame, the clean first one included, gets the video's timestep embedding.
        sinusoid = dict(dim=cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos, shift=cfg.freq_shift)
        t = timestep_sinusoid(_per_video("timesteps", timesteps, batch), **sinusoid).astype(self.dtype)
        temb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t)
        if cfg.use_frame_stride_condition:
            s = timestep_sinusoid(_per_video("frame_stride", frame_stride, batch), **sinusoid).astype(self.dtype)
            temb = temb + TimestepEmbedding(cfg.time_embed_dim, zero_init_last=True, name="frame_stride_embedding", **kw)(s)
        # Split by video like the activations, not by channel like the embedding's weights.
        temb = nn.with_logical_constraint(temb, ("batch", "channels"))

        down_block = _rematerialised(DownBlock, self.remat_policy)
        mid_block = _rematerialised(MidBlock, self.remat_policy)
        # upsample_size (argument 6, counting the module) is a static shape.
        up_block = _rematerialised(UpBlock, self.remat_policy, static_argnums=(6,))

        x = nn.Conv(cfg.block_out_channels[0], (3, 3), padding=((1, 1), (1, 1)), name="conv_in", **kw)(x)
        x = _constrain(x)
        skips = [x]
        n_blocks = len(cfg.block_out_channels)
        for i, block_type in enumerate(cfg.down_block_types):
            x, block_skips = down_block(
                out_channels=cfg.block_out_channels[i],
                heads=cfg.attention_head_dim[i],
                has_attention=block_type == "CrossAttnDownBlock2D",
                add_downsample=i < n_blocks - 1,
                name=f"down_blocks_{i}",
                **block_kw,
            )(x, temb, context, first)
            x = _constrain(x)
            skips.extend(block_skips)

        x = mid_block(
            out_channels=cfg.block_out_channels[-1],
            heads=cfg.attention_head_dim[-1],
            has_attention=True,
            name="mid_block",
            **block_kw,
        )(x, temb, context)
        x = _constrain(x)

        up_channels = tuple(reversed(cfg.block_out_channels))
        up_heads = tuple(reversed(cfg.attention_head_dim))
        for i, block_type in enumerate(cfg.up_block_types):
            block_skips = skips[-(cfg.layers_per_block + 1) :]
            del skips[-(cfg.layers_per_block + 1) :]
            is_final = i == n_blocks - 1
            # Upsample to the next skip's size, so odd latent sizes round-trip like diffusers.
            upsample_size = None if is_final else skips[-1].shape[2:4]
            x = up_block(
                out_channels=up_channels[i],
                heads=up_heads[i],
                has_attention=block_type == "CrossAttnUpBlock2D",
                add_upsample=not is_final,
                name=f"up_blocks_{i}",
                **block_kw,
            )(x, block_skips, temb, context, first, upsample_size)
            x = _constrain(x)

        x = nn.silu(frame_group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
        x = nn.Conv(cfg.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv_out", **kw)(x)
        return x[:, 1:] if cfg.conditions_on_first_frame else x


def attention_head_widths(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Head width of every attention layer, by kind ("spatial", "cross", "temporal")."""
    spatial, temporal = [], []
    has_attention = [t.startswith("CrossAttn") for t in config.down_block_types] + [True]
    has_attention += [t.startswith("CrossAttn") for t in config.up_block_types]
    channels = list(config.block_out_channels) + [config.block_out_channels[-1]] + list(reversed(config.block_out_channels))
    heads = list(config.attention_head_dim) + [config.attention_head_dim[-1]] + list(reversed(config.attention_head_dim))
    for index, (attends, c, n) in enumerate(zip(has_attention, channels, heads)):
        if attends:
            spatial.append(c // n)
            is_mid = index == len(config.block_out_channels)
            if config.use_temporal and not is_mid:
                temporal.append(c // config.n_temp_heads)
    widths = {"spatial": tuple(sorted(set(spatial))), "temporal": tuple(sorted(set(temporal)))}
    widths["cross"] = tuple(sorted(set(spatial + temporal)))
    return widths


def build_unet(
    config: UNetConfig,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    attention: str = "auto",
    platform: Optional[str] = None,
    **kwargs,
) -> VideoUNet:
    """The video UNet with its attention kernels resolved for `platform`.

    platform: of the devices the model will be compiled for ("cpu", "tpu", "gpu"); default that of
    `jax.devices()`. Pass the mesh's (or the TPU topology's) when compiling for other devices.
    """
    platform = platform or jax.devices()[0].platform
    kernels = resolve_attention(attention, platform, attention_head_widths(config), dtype)
    return VideoUNet(config=config, dtype=dtype, param_dtype=param_dtype, attention_implementation=kernels, **kwargs)


def apply_unet(model: VideoUNet, params, sample, timesteps, text, first_frame, frame_stride):
    """`model.apply` with positional conditioning: the signature the samplers and losses call."""
    return model.apply({"params": params}, sample, timesteps, text, first_frame_latents=first_frame, frame_stride=frame_stride)


def dummy_inputs(config: UNetConfig, batch: int = 1, frames: int = 2, height: Optional[int] = None, width=None):
    """Smallest well-formed inputs for `init`/`eval_shape`; `frames` counts the conditioning frame."""
    size = 2 ** (len(config.block_out_channels) - 1)
    height, width = height or size, width or size
    sample_frames = frames - 1 if config.conditions_on_first_frame else frames
    c = config.in_channels
    return dict(
        sample=jnp.zeros((batch, sample_frames, height, width, c), jnp.float32),
        timesteps=jnp.zeros((batch,), jnp.int32),
        encoder_hidden_states=jnp.zeros((batch, 1, config.cross_attention_dim), jnp.float32),
        first_frame_latents=jnp.zeros((batch, 1, height, width, c), jnp.float32),
        frame_stride=jnp.ones((batch,), jnp.int32),
    )


def random_params(model: VideoUNet, seed: int):
    """Random params of the right shapes from `eval_shape` and NumPy: no init compilation.

    Kernels ~ N(0, 1/fan_in), norms at identity, alpha mixers at 0.5 so every temporal path is live.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(model.config)))["params"]
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
        if name == "alpha":
            return np.full(leaf.shape, 0.5, np.float32)
        if name == "freqs":
            return np.asarray(rotary_frequencies(4 * leaf.shape[0]))
        return (np.ones if name == "scale" else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


def map_mixers(fn, params):
    """Applies `fn` to every temporal alpha mixer in a params tree."""
    return traverse_util.path_aware_map(lambda path, x: fn(x) if path[-1] == "alpha" else x, params)


def clamp_mixers(params):
    """Projects the alpha mixers back into [0, 1]; apply after each optimiser update, as the
    reference's in-place clamp does."""
    return map_mixers(lambda a: jnp.clip(a, 0.0, 1.0), params)
