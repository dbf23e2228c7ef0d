"""Analytic FLOP count of the video UNet (`jax_i2v.models.unet.VideoUNet`).

FLOPs are 2 x multiply-accumulates of the matmuls (Dense layers, attention's QK^T and AV) and
convolutions; elementwise ops, norms and softmax are left out. The walk mirrors `VideoUNet`'s
(down blocks, mid block, up blocks with skip concatenation), so it follows any `UNetConfig`.
It counts what this implementation computes, which is less than the reference computes: the
first-frame keys and values (spatial [frame || frame 0], the temporal 8-neighbour window) reuse
frame 0's projections instead of projecting the concatenated sequences, and the text is projected
once per video, not per frame (spatial) and per pixel (temporal cross-attention).
"""

from __future__ import annotations

import collections

from jax_i2v.models.config import UNetConfig
from jax_i2v.models.transformer import NEIGHBOUR_OFFSETS
from jax_i2v.models.unet import REMAT_POLICIES

CATEGORIES = ("dense", "conv", "attention")


def _valid_taps(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> tuple[int, int]:
    """(output length, number of (output, kernel tap) pairs that read a real input element)."""
    out = (size + pad_lo + pad_hi - kernel) // stride + 1
    taps = sum(1 for o in range(out) for k in range(kernel) if 0 <= o * stride + k - pad_lo < size)
    return out, taps


class _Counter:
    """Accumulates FLOPs per category, and separately those inside the (rematerialisable) blocks."""

    def __init__(self, count_padding: bool):
        self.count_padding = count_padding
        self.totals = collections.Counter()
        self.in_blocks = collections.Counter()
        self.inside_block = False

    def add(self, category: str, flops: int):
        self.totals[category] += flops
        if self.inside_block:
            self.in_blocks[category] += flops

    def dense(self, tokens: int, fan_in: int, fan_out: int):
        self.add("dense", 2 * tokens * fan_in * fan_out)

    def attention(self, sequences: int, q_len: int, k_len: int, channels: int):
        # QK^T and AV, each 2 * q * k * head_dim per head: heads * head_dim = channels.
        self.add("attention", 2 * 2 * sequences * q_len * k_len * channels)

    def conv(self, images: int, sizes, kernel, strides, pads, c_in: int, c_out: int):
        """A convolution over `images` independent inputs; `sizes` etc. are per spatial axis."""
        positions = 1
        for size, k, s, (lo, hi) in zip(sizes, kernel, strides, pads):
            out, taps = _valid_taps(size, k, s, lo, hi)
            # Dense convention: every output reads the whole kernel, padding included.
            positions *= out * k if self.count_padding else taps
        self.add("conv", 2 * images * positions * c_in * c_out)


class _Walk:
    """Walks `VideoUNet.__call__` with shapes only."""

    def __init__(self, cfg: UNetConfig, counter: _Counter, batch: int, frames: int, text_len: int):
        self.cfg, self.n, self.batch, self.frames, self.text_len = cfg, counter, batch, frames, text_len
        self.images = batch * frames  # every 2-D op runs on all frames, the conditioning one included

    def conv2d(self, hw, c_in, c_out, kernel=3, stride=1, pads=((1, 1), (1, 1))):
        self.n.conv(self.images, hw, (kernel, kernel), (stride, stride), pads, c_in, c_out)

    def resnet(self, hw, c_in, c_out):
        self.conv2d(hw, c_in, c_out)
        self.n.dense(self.batch, self.cfg.time_embed_dim, c_out)  # time_emb_proj, once per video
        self.conv2d(hw, c_out, c_out)
        if c_in != c_out:
            self.conv2d(hw, c_in, c_out, kernel=1, pads=((0, 0), (0, 0)))

    def temporal_resnet(self, hw, c):
        # Two (3, 1, 1) convs over (F, H, W), zero-padded in time only.
        for _ in range(2):
            self.n.conv(self.batch, (self.frames,) + hw, (3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0)), c, c)

    def transformer(self, hw, c, temporal: bool):
        cfg, n = self.cfg, self.n
        pixels = hw[0] * hw[1]
        tokens = self.images * pixels
        n.dense(tokens, c, c)  # proj_in
        # attn1: q, k, v, to_out on every token.
        n.dense(tokens, c, c)
        n.dense(tokens, c, c)
        n.dense(tokens, c, c)
        if temporal:
            # Over the F frames of each pixel, plus frame 0's 8 neighbours (gathered after projection).
            keys = self.frames + (len(NEIGHBOUR_OFFSETS) if cfg.augment_temporal_attention else 0)
            n.attention(self.batch * pixels, self.frames, keys, c)
        else:
            # Over each frame's pixels; with first-frame attention the keys are [frame || frame 0].
            keys = pixels * (2 if cfg.spatial_first_frame_attention else 1)
            n.attention(self.images, pixels, keys, c)
        n.dense(tokens, c, c)
        # attn2: text cross-attention (also in the temporal transformer); text k/v once per video.
        n.dense(tokens, c, c)
        n.dense(self.batch * self.text_len, cfg.cross_attention_dim, c)
        n.dense(self.batch * self.text_len, cfg.cross_attention_dim, c)
        n.attention(self.batch, self.frames * pixels, self.text_len, c)
        n.dense(tokens, c, c)
        # GEGLU feed-forward (C -> 8C, gate, 4C -> C), then proj_out.
        n.dense(tokens, c, 8 * c)
        n.dense(tokens, 4 * c, c)
        n.dense(tokens, c, c)

    def layer(self, hw, c_in, c_out, has_attention: bool):
        self.resnet(hw, c_in, c_out)
        if self.cfg.use_temporal:
            self.temporal_resnet(hw, c_out)
        if has_attention:
            self.transformer(hw, c_out, temporal=False)
            if self.cfg.use_temporal:
                self.transformer(hw, c_out, temporal=True)

    def replace_first_frame(self, hw, c):
        if self.cfg.first_frame_condition_mode == "conv2d":  # 1x1 conv of the latent, frame 0 only
            self.n.conv(self.batch, hw, (1, 1), (1, 1), ((0, 0), (0, 0)), self.cfg.in_channels, c)

    def unet(self, height: int, width: int):
        cfg, n = self.cfg, self.n
        c0 = cfg.block_out_channels[0]
        n.dense(self.batch, c0, cfg.time_embed_dim)
        n.dense(self.batch, cfg.time_embed_dim, cfg.time_embed_dim)
        if cfg.use_frame_stride_condition:
            n.dense(self.batch, c0, cfg.time_embed_dim)
            n.dense(self.batch, cfg.time_embed_dim, cfg.time_embed_dim)
        hw = (height, width)
        self.conv2d(hw, cfg.in_channels, c0)  # conv_in

        n.inside_block = True
        skips = [(c0, hw)]
        c, levels = c0, len(cfg.block_out_channels)
        for i, block_type in enumerate(cfg.down_block_types):
            c_out = cfg.block_out_channels[i]
            self.replace_first_frame(hw, c)
            for _ in range(cfg.layers_per_block):
                self.layer(hw, c, c_out, block_type == "CrossAttnDownBlock2D")
                c = c_out
                skips.append((c, hw))
            if i < levels - 1:
                pads = ((1, 1), (1, 1)) if cfg.downsample_padding == 1 else ((0, 1), (0, 1))
                out = tuple(_valid_taps(s, 3, 2, *pads[0])[0] for s in hw)
                self.conv2d(hw, c, c, stride=2, pads=pads)
                hw = out
                skips.append((c, hw))

        self.resnet(hw, c, c)
        if cfg.use_temporal:
            self.temporal_resnet(hw, c)
        self.transformer(hw, c, temporal=False)
        self.resnet(hw, c, c)
        if cfg.use_temporal:
            self.temporal_resnet(hw, c)

        for i, block_type in enumerate(cfg.up_block_types):
            c_out = cfg.block_out_channels[levels - 1 - i]
            self.replace_first_frame(hw, c)
            for _ in range(cfg.layers_per_block + 1):
                skip_c, _ = skips.pop()
                self.layer(hw, c + skip_c, c_out, block_type == "CrossAttnUpBlock2D")
                c = c_out
            if i < levels - 1:
                hw = skips[-1][1]  # nearest upsample to the next skip's size, then a 3x3 conv
                self.conv2d(hw, c, c)
        n.inside_block = False

        self.conv2d(hw, c, cfg.out_channels)  # conv_out, on all frames before frame 0 is dropped


def _count(config, batch, frames, height, width, text_len, count_padding) -> _Counter:
    if min(batch, frames, height, width, text_len) < 1:
        raise ValueError("batch, frames, height, width and text_len must all be >= 1")
    counter = _Counter(count_padding)
    _Walk(config, counter, batch, frames, text_len).unet(height, width)
    return counter


def unet_flops_breakdown(
    config: UNetConfig,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    text_len: int,
    count_padding: bool = True,
) -> dict[str, int]:
    """`unet_flops` split into "dense" (Dense layers), "conv" and "attention" (QK^T and AV)."""
    counter = _count(config, batch, frames, height, width, text_len, count_padding)
    return {k: counter.totals[k] for k in CATEGORIES}


def unet_flops(
    config: UNetConfig,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    text_len: int,
    count_padding: bool = True,
) -> int:
    """FLOPs (2 x multiply-accumulates of matmuls and convolutions) of one `VideoUNet` forward pass.

    `frames` counts the conditioning frame, as in `dummy_inputs` (the model runs on all of them);
    height and width are latent sizes; `text_len` is the number of text tokens.
    `count_padding=False` leaves out conv taps that read zero padding, as XLA's cost model does.
    """
    shapes = dict(batch=batch, frames=frames, height=height, width=width, text_len=text_len)
    return sum(unet_flops_breakdown(config, count_padding=count_padding, **shapes).values())


def train_step_flops(
    config: UNetConfig,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    text_len: int,
    remat: str = "none",
    count_padding: bool = True,
) -> int:
    """FLOPs of one training forward + backward pass of the UNet.

    Convention: backward = 2 x forward (gradients w.r.t. activations and w.r.t. weights), so
    "none" is 3 x forward. "block" adds one more forward of the down/mid/up blocks, which remat
    recomputes (conv_in, conv_out and the time embedding sit outside them: 0.02% of the released
    model's forward). "dots_saveable" keeps the Dense outputs, so it adds only the blocks'
    convolutions and attention products. The loss, the optimizer update and elementwise work are
    not counted.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
    counter = _count(config, batch, frames, height, width, text_len, count_padding)
    total = 3 * sum(counter.totals.values())
    if remat == "block":
        total += sum(counter.in_blocks.values())
    elif remat == "dots_saveable":
        total += counter.in_blocks["conv"] + counter.in_blocks["attention"]
    return total


# Dense bf16 peak FLOP/s per chip by `device_kind` prefix (vendors' spec sheets, no sparsity).
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def peak_bf16_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak in FLOP/s, or None for kinds not in `PEAK_BF16_FLOPS` (CPUs)."""
    matches = [kind for kind in PEAK_BF16_FLOPS if device_kind.startswith(kind)]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None
