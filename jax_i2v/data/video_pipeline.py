"""Grain input pipelines: captioned video clips as each paper samples them, and captioned images.

Clips (`make_clip`), ConsistI2V's rule (`dataset.py:183-315`, `consisti2v_clips`): frame stride
s ~ U{lo..hi}, clip_len = min(T, (F - 1) s + 1), a random start and F indices
linspace(start, start + clip_len - 1, F) (a shorter video gives a clip over all of it, stride still
s); MCM's (`mcm_clips`): stride 8, F frames spanning (F - 1) 8 + 1, videos that short are an error
(build with that `min_frames`). The whole clip is flipped horizontally with probability 1/2 when
configured (swapping "left" and "right" in the caption, which names motion directions; datasets
whose motion changes within a video caption each clip through `clip_caption`); frames are resized
(short side) and centre-cropped, or cropped by one random resized box for the whole clip, then
scaled to [-1, 1]. Examples hold either decoded frames (`video`: (T, H, W, 3) uint8) or an encoded
file (`video`: bytes with `num_frames`), of which only the clip's frames are decoded.

Each host decodes only its rows of each global batch; shuffling and the random draws are
deterministic in the seed and independent of the host count, and the iterator's state is saved
with checkpoints so a resumed run sees the same data order.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Optional, Sequence

import grain
import numpy as np
from absl import flags

from jax_i2v import media
from jax_i2v.data.decode import SkipReason, decode_frames, decode_image
from jax_i2v.text import caption_text

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")
log = logging.getLogger(__name__)
# Per clip: how many videos failed to decode and were replaced before it (summed per batch).
UNREADABLE_KEY = "unreadable_videos"
# Replacements tried for one clip before the stream stops with an error.
MAX_REPLACEMENTS = 16


CROPS = ("center", "random_resized")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    num_frames: int = 16
    resolution: int = 256
    stride_range: tuple[int, int] = (1, 5)
    random_flip: bool = True
    crop: str = "center"  # or "random_resized": one box for the whole clip
    crop_scale: tuple[float, float] = (0.75, 1.0)  # random_resized: the box's share of the frame area
    # A video shorter than the stride's span gives a clip over all of it (ConsistI2V); False: an
    # error (MCM, whose datasets are built without such videos).
    shorten: bool = True

    def __post_init__(self):
        lo, hi = self.stride_range
        if self.num_frames < 2 or self.resolution < 1 or not 1 <= lo <= hi:
            raise ValueError(f"need num_frames >= 2, resolution >= 1 and 1 <= stride_range[0] <= [1]; got {self}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")

    @property
    def min_video_frames(self) -> int:
        """The frames a video needs for a clip at the largest stride without shortening."""
        return (self.num_frames - 1) * self.stride_range[1] + 1


def consisti2v_clips(resolution: int = 256, num_frames: int = 16) -> ClipConfig:
    """ConsistI2V's training clips: stride 1-5, shortened for short videos, flip, centre crop."""
    return ClipConfig(num_frames, resolution, (1, 5), random_flip=True, crop="center")


def mcm_clips(resolution: int = 256, num_frames: int = 16) -> ClipConfig:
    """MCM's WebVid clips: stride 8, no flip, one RandomResizedCrop(scale (0.75, 1)) per clip."""
    return ClipConfig(num_frames, resolution, (8, 8), random_flip=False, crop="random_resized", crop_scale=(0.75, 1.0), shorten=False)


def clip_config(data) -> ClipConfig:
    """From an experiment's `data` section (crop, crop_scale and shorten optional)."""
    return ClipConfig(
        num_frames=data.frames,
        resolution=data.resolution,
        stride_range=tuple(data.stride_range),
        random_flip=data.random_flip,
        crop=data.get("crop", "center"),
        crop_scale=tuple(data.get("crop_scale", (0.75, 1.0))),
        shorten=data.get("shorten", True),
    )


def video_length(example: dict) -> int:
    video = example["video"]
    return int(example["num_frames"]) if isinstance(video, bytes) else len(video)


def video_frames(example: dict, indices) -> np.ndarray:
    """Frames `indices` of an example's video, decoded or not -> (len(indices), H, W, 3) uint8."""
    video = example["video"]
    return decode_frames(video, indices) if isinstance(video, bytes) else np.asarray(video)[np.asarray(indices)]


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
    """{"video": (T, H, W, 3) uint8 or encoded bytes (with "num_frames"), "caption": str|bytes} ->
    {"video": (F, R, R, 3) float32 in [-1, 1], "caption": str, "frame_stride": float32,
    "frame_indices": (F,) int64, "flipped": bool}.

    The caption is the example's, or clip_caption(example, frame_indices) when given."""
    length = video_length(example)
    lo, hi = config.stride_range
    stride = int(rng.integers(lo, hi + 1))
    span = (config.num_frames - 1) * stride + 1
    if not config.shorten and length < span:
        source = caption_text(example.get("source", b"")) or "a video"
        raise ValueError(
            f"{source} has {length} frames, fewer than the {span} that {config.num_frames} frames at stride {stride} span "
            f"(build datasets for these clips with min_frames={config.min_video_frames})"
        )
    indices = sample_frame_indices(length, config.num_frames, stride, rng)
    caption = clip_caption(example, indices) if clip_caption else caption_text(example["caption"])
    clip = video_frames(example, indices)
    flipped = bool(config.random_flip and rng.random() < 0.5)
    if flipped:
        clip = clip[:, :, ::-1]
        caption = swap_left_right(caption)
    r = config.resolution
    if config.crop == "random_resized":
        top, left, h, w = media.random_resized_crop_box(clip.shape[1], clip.shape[2], config.crop_scale, rng)
        clip = np.stack([media.resize(np.ascontiguousarray(frame[top : top + h, left : left + w]), r, r) for frame in clip])
    else:
        clip = np.stack([media.resize_and_center_crop(np.ascontiguousarray(frame), r, r) for frame in clip])
    return {
        "video": media.to_model_range(clip),
        "caption": caption,
        "frame_stride": np.float32(stride),
        "frame_indices": indices,
        "flipped": np.bool_(flipped),
    }


def make_image(example: dict, resolution: int, rng: np.random.Generator, crop_scale: tuple[float, float] = (0.5, 1.0)) -> dict:
    """{"image": encoded bytes or (H, W, 3) uint8, "caption"} -> {"image": (R, R, 3) float32 in
    [-1, 1], "caption": str}: one RandomResizedCrop(scale `crop_scale`), as MCM reads its image sets."""
    image = example["image"]
    image = decode_image(image) if isinstance(image, bytes) else np.asarray(image)
    top, left, h, w = media.random_resized_crop_box(image.shape[0], image.shape[1], crop_scale, rng)
    crop = media.resize(np.ascontiguousarray(image[top : top + h, left : left + w]), resolution, resolution)
    return {"image": media.to_model_range(crop), "caption": caption_text(example["caption"])}


def replacing_unreadable(element_fn, source):
    """`element_fn(example, rng)` where an example that no longer decodes (changed after the dataset
    was built) is replaced by one drawn with the same rng, so batches stay full and deterministic;
    each result counts the replacements under `UNREADABLE_KEY`."""

    def element(example, rng):
        for replaced in range(MAX_REPLACEMENTS + 1):
            try:
                return {**element_fn(example, rng), UNREADABLE_KEY: np.int32(replaced)}
            except SkipReason as reason:
                name = caption_text(example.get("source", b"")) or "a video"
                log.warning("skipped %s, which no longer decodes (%s)", name, reason)
                example = source[int(rng.integers(len(source)))]
        raise RuntimeError(f"{MAX_REPLACEMENTS + 1} videos in a row failed to decode: is the dataset damaged?")

    return element


def read_options(read_threads: int) -> grain.ReadOptions:
    # Each thread makes whole batches; a few batches ahead per thread, not Grain's default 500
    # (hundreds of MB per batch at 16 x 256 x 256 frames).
    return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)


def batched_stream(
    source, element_fn, global_batch_size: int, seed: int, shard_index: int, shard_count: int, read_threads: int
) -> grain.IterDataset:
    """This host's rows of an infinite stream of global batches of element_fn(example, rng),
    reshuffled every epoch: global batch b holds stream elements [b G, (b + 1) G), and host h
    reads and decodes only rows [h G / H, (h + 1) G / H) of it."""
    if global_batch_size % shard_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {shard_count} hosts")
    if read_threads < 1:
        raise ValueError(f"read_threads must be >= 1, got {read_threads}")
    per_host = global_batch_size // shard_count
    ds = grain.MapDataset.source(source).shuffle(seed=seed).random_map(element_fn, seed=seed + 1).repeat(None)
    return ds.batch(per_host, drop_remainder=True, batch_fn=_stack)[shard_index::shard_count]


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
    read_threads: int = 16,
    num_workers: int = 0,
) -> grain.IterDataset:
    """This host's rows of an infinite stream of global batches of clips (see `batched_stream`):
    training on 1 or N hosts sees the same data. With `caption_transform` (prompts -> array, e.g.
    embeddings or token ids), batches carry its output under `caption_key` instead of the caption
    strings; `clip_caption` as in `make_clip`. A video that fails to decode is replaced
    (`replacing_unreadable`) and counted in the batch's `UNREADABLE_KEY`. `read_threads` make batches in parallel; with
    `num_workers` > 0 they run in that many worker processes (video decoding at scale), with the
    same batches and a checkpointable state either way."""
    clip = replacing_unreadable(lambda example, rng: make_clip(example, config, rng, clip_caption), source)
    ds = batched_stream(source, clip, global_batch_size, seed, shard_index, shard_count, read_threads)
    ds = ds.to_iter_dataset(read_options(read_threads))
    if num_workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; programs without absl never parse them
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    if caption_transform is not None:  # here, not in the workers: it may be a JAX text encoder
        ds = ds.map(lambda batch: _transform_captions(batch, caption_transform, caption_key))
    return ds


def image_dataset(
    source: Sequence[dict],
    resolution: int,
    global_batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    read_threads: int = 16,
) -> grain.IterDataset:
    """This host's rows of an infinite stream of global batches of {"image": (B, R, R, 3) in
    [-1, 1], "caption": [str]}: MCM's high-quality images for its frame discriminator."""
    ds = batched_stream(
        source,
        lambda example, rng: make_image(example, resolution, rng, crop_scale),
        global_batch_size,
        seed,
        shard_index,
        shard_count,
        read_threads,
    )
    return ds.to_iter_dataset(read_options(read_threads))


def _stack(examples: Sequence[dict]) -> dict:
    """Arrays stacked; text (a caption, or a tuple of them) kept as a list."""
    return {
        key: [e[key] for e in examples] if isinstance(value, (str, tuple)) else np.stack([e[key] for e in examples])
        for key, value in examples[0].items()
    }


def _transform_captions(batch: dict, transform, key: str) -> dict[str, Any]:
    batch = dict(batch)
    batch[key] = np.asarray(transform(batch.pop("caption")))
    return batch
