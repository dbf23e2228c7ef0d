"""Grain input pipeline for captioned video clips (ConsistI2V's sampling, `dataset.py:183-315`).

Per example: frame stride s ~ U{lo..hi}, clip_len = min(T, (F - 1) s + 1), a random start and F
indices linspace(start, start + clip_len - 1, F); the whole clip is flipped horizontally with
probability 1/2 (swapping "left" and "right" in the caption, which names motion directions;
datasets whose motion changes within a video caption each clip through `clip_caption`);
frames are resized (short side) and centre-cropped, then scaled to [-1, 1]. Each host decodes only
its rows of each global batch; shuffling and the random draws are deterministic in the seed and
independent of the host count, and the iterator's state is saved with checkpoints so a resumed
run sees the same data order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence

import grain
import numpy as np

from jax_i2v import media
from jax_i2v.text import caption_text

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    num_frames: int = 16
    resolution: int = 256
    stride_range: tuple[int, int] = (1, 5)
    random_flip: bool = True

    def __post_init__(self):
        lo, hi = self.stride_range
        if self.num_frames < 2 or self.resolution < 1 or not 1 <= lo <= hi:
            raise ValueError(f"need num_frames >= 2, resolution >= 1 and 1 <= stride_range[0] <= [1]; got {self}")


def swap_left_right(caption: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


def sample_frame_indices(length: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    clip_len = min(length, (num_frames - 1) * stride + 1)
    start = int(rng.integers(0, length - clip_len + 1))
    return np.linspace(start, start + clip_len - 1, num_frames).astype(np.int64)


# (example, frame indices of the clip) -> the clip's caption, for datasets whose captions describe
# motion that differs between clips of one video (jax_i2v.data.moving_shapes.clip_caption).
ClipCaption = Callable[[dict, np.ndarray], str]


def make_clip(example: dict, config: ClipConfig, rng: np.random.Generator, clip_caption: Optional[ClipCaption] = None) -> dict:
    """{"video": (T, H, W, 3) uint8, "caption": str|bytes} -> {"video": (F, R, R, 3) float32 in
    [-1, 1], "caption": str, "frame_stride": float32, "frame_indices": (F,) int64, "flipped": bool}.

    The caption is the example's, or clip_caption(example, frame_indices) when given."""
    video = np.asarray(example["video"])
    lo, hi = config.stride_range
    stride = int(rng.integers(lo, hi + 1))
    indices = sample_frame_indices(video.shape[0], config.num_frames, stride, rng)
    caption = clip_caption(example, indices) if clip_caption else caption_text(example["caption"])
    clip = video[indices]
    flipped = bool(config.random_flip and rng.random() < 0.5)
    if flipped:
        clip = clip[:, :, ::-1]
        caption = swap_left_right(caption)
    r = config.resolution
    clip = np.stack([media.resize_and_center_crop(np.ascontiguousarray(frame), r, r) for frame in clip])
    return {
        "video": media.to_model_range(clip),
        "caption": caption,
        "frame_stride": np.float32(stride),
        "frame_indices": indices,
        "flipped": np.bool_(flipped),
    }


def training_dataset(
    source: Sequence[dict],
    config: ClipConfig,
    global_batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    caption_transform: Optional[Callable[[Sequence[str]], np.ndarray]] = None,
    caption_key: str = "text",
    clip_caption: Optional[ClipCaption] = None,
) -> grain.IterDataset:
    """This host's rows of an infinite stream of global batches, reshuffled every epoch.

    The global stream (shuffle, clip sampling with per-element random draws) does not depend on
    the number of hosts: global batch b holds stream elements [b G, (b + 1) G), and host h reads and
    decodes only rows [h G / H, (h + 1) G / H) of it. Training on 1 or N hosts sees the same data.
    With `caption_transform` (prompts -> array, e.g. embeddings or token ids), batches carry its
    output under `caption_key` instead of the caption strings; `clip_caption` as in `make_clip`.
    """
    if global_batch_size % shard_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {shard_count} hosts")
    per_host = global_batch_size // shard_count
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    ds = ds.random_map(lambda example, rng: make_clip(example, config, rng, clip_caption), seed=seed + 1).repeat(None)
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=_stack)[shard_index::shard_count]
    if caption_transform is not None:
        ds = ds.map(lambda batch: _transform_captions(batch, caption_transform, caption_key))
    return ds.to_iter_dataset()


def _stack(examples: Sequence[dict]) -> dict:
    return {key: [e[key] for e in examples] if key == "caption" else np.stack([e[key] for e in examples]) for key in examples[0]}


def _transform_captions(batch: dict, transform, key: str) -> dict[str, Any]:
    batch = dict(batch)
    batch[key] = np.asarray(transform(batch.pop("caption")))
    return batch
