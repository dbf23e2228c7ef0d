"""What an experiment trains on (`config.data.source`), as sharded global batches.

- "moving_shapes": the synthetic dataset (built under `data.dir` if missing and
  `data.build_if_missing`), clips captioned from their own trajectories;
- "videos": a dataset built by `launch/build_dataset.py` (`data.dir`: its folder, NAME/1.0.0),
  clips sampled and decoded per step;
- "latents": a cache written by `launch/cache_latents.py` (`data.dir`), already encoded.

Clips of the first two go to the devices as uint8 pixels (with token ids for a frozen caption
encoder) and the train step encodes them (`jax_i2v.train.encoders`).

Clip settings come from `data`: frames, resolution, stride_range, random_flip, and optionally crop
("center" | "random_resized"), crop_scale and shorten (`jax_i2v.data.video_pipeline.ClipConfig`);
`data.read_threads` and `data.num_workers` set Grain's parallelism.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from jax_i2v import media
from jax_i2v.data.latent_cache import LatentCacheSource, cache_settings, check_matches
from jax_i2v.data.video_pipeline import batched_stream, clip_config, read_options, training_dataset, video_frames
from jax_i2v.data.video_sources import source_name, video_sources
from jax_i2v.models.text_encoder import TextConditioning
from jax_i2v.models.vae import LatentCodec
from jax_i2v.parallel.partitioning import DEFAULT_RULES, batch_sharding
from jax_i2v.text import caption_text
from jax_i2v.train.encoders import pixels_to_uint8


@dataclasses.dataclass
class TrainingInputs:
    """`iterator`: this host's batches (Grain, checkpointable); `encoded`: whether they hold latents
    already; `preview_examples(n)`: n held-out (first frame (H, W, 3) uint8, caption) pairs."""

    iterator: Any
    encoded: bool
    preview_examples: Callable[[int], tuple[list[np.ndarray], list[str]]]


def _first_examples(source, count: int, first_frame: Callable[[dict], np.ndarray]):
    if count > len(source):
        raise ValueError(f"config.train.sample_videos={count} exceeds the {len(source)} held-out examples")
    examples = [source[i] for i in range(count)]
    return [first_frame(e) for e in examples], [caption_text(e["caption"]) for e in examples]


def training_inputs(
    config: ml_collections.ConfigDict, batch_size: int, seed: int, text: TextConditioning, codec: LatentCodec
) -> TrainingInputs:
    data = config.data
    kind = source_name(data)
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    threads, workers = data.get("read_threads", 16), data.get("num_workers", 0)
    if kind == "latents":
        source = LatentCacheSource(data.dir)
        check_matches(source.metadata, cache_settings(config, text.caption_key), data.dir)
        stream = batched_stream(source, lambda example, rng: example, batch_size, seed, read_threads=threads, **shard)
        iterator = stream.to_iter_dataset(read_options(threads))

        def decoded_first_frame(example):
            return media.to_uint8((np.asarray(codec.decode(example["first_frame_latent"]))[0] + 1.0) / 2.0)

        return TrainingInputs(iter(iterator), True, lambda n: _first_examples(source, n, decoded_first_frame))

    train, held_out, clip_caption = video_sources(data)
    clips = training_dataset(
        train,
        clip_config(data),
        batch_size,
        seed,
        caption_transform=text.caption_transform,
        caption_key=text.caption_key,
        clip_caption=clip_caption,
        read_threads=threads,
        num_workers=workers,
        **shard,
    )

    def first_frame(example):
        frame = video_frames(example, [0])[0]
        return media.resize_and_center_crop(frame, data.resolution, data.resolution)

    return TrainingInputs(iter(clips), False, lambda n: _first_examples(held_out, n, first_frame))


def global_batch(local: dict, mesh, caption_key: str, encoded: bool, rules=DEFAULT_RULES) -> dict[str, jax.Array]:
    """This host's rows -> the step's global arrays: {"latents" (B, F, h, w, C) float32 if
    `encoded`, else "video" (B, F, H, W, 3) uint8; `caption_key`; "frame_stride" (B,)}. Nothing is
    computed on the device here: the step encodes raw clips."""
    clips = {"latents": local["latents"]} if encoded else {"video": pixels_to_uint8(local["video"])}
    arrays = {**clips, caption_key: local[caption_key], "frame_stride": local["frame_stride"]}
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v), rules), v) for k, v in arrays.items()}
