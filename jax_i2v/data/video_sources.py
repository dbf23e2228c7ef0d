"""The videos an experiment's `data` section names (`data.source`), as random-access sources."""

from __future__ import annotations

import ml_collections

from jax_i2v.data import moving_shapes
from jax_i2v.data.media_tfds import load_media_dataset
from jax_i2v.data.moving_shapes_tfds import build_moving_shapes_on_process_zero, load_moving_shapes

SOURCES = ("moving_shapes", "videos", "latents")


def source_name(data: ml_collections.ConfigDict) -> str:
    """`data.source`, checked."""
    source = data.get("source", "moving_shapes")
    if source not in SOURCES:
        raise ValueError(f"config.data.source must be one of {SOURCES}, got {source!r}")
    return source


def video_sources(data: ml_collections.ConfigDict):
    """(train videos, held-out videos, per-clip captioner or None) of a data section whose source is
    "moving_shapes" (built first if missing and `build_if_missing`) or "videos" (whose held-out
    examples, for previews, are its first videos)."""
    kind = source_name(data)
    if kind == "moving_shapes":
        settings = data.dataset.to_dict()
        if data.get("build_if_missing", False):
            build_moving_shapes_on_process_zero(data.dir, **settings)
        # Clips start anywhere in the stored videos, also after objects bounced: caption each clip.
        return (
            load_moving_shapes(data.dir, "train", **settings),
            load_moving_shapes(data.dir, "test", **settings),
            moving_shapes.clip_caption,
        )
    if kind == "videos":
        videos = load_media_dataset(data.dir)
        return videos, videos, None
    raise ValueError(f"config.data.source must name videos ('moving_shapes' or 'videos') here, got {kind!r}")
