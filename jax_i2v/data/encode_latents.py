"""Encodes an experiment's video dataset once into a latent cache (`jax_i2v.data.latent_cache`).

Each process takes every P-th (video, draw) pair, samples the clip as training would (stride,
start, flip, crop; the generator seeded by (seed, video, draw), so the clips do not depend on the
process count), encodes batches with the experiment's codec over its local devices, runs the
caption transform (CLIP embeddings for a frozen encoder, token ids for a trainable one) and writes
its own array_record file. Process 0 writes metadata.json last, so a folder with one is complete;
an interrupted run leaves none and is simply run again.
"""

from __future__ import annotations

import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_i2v.config_utils import latent_codec, text_conditioning
from jax_i2v.data.latent_cache import LATENT_DTYPES, METADATA, cache_settings, encode_record, shard_path, write_metadata, write_shard
from jax_i2v.data.video_pipeline import clip_config, make_clip
from jax_i2v.data.video_sources import video_sources
from jax_i2v.parallel.hosts import wait_for_all_processes


def encode_latents(
    config: ml_collections.ConfigDict,
    out_dir: str,
    clips_per_video: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    dtype: str = "float16",
    show_progress: bool = True,
) -> dict:
    """Writes the cache; returns its metadata."""
    if dtype not in LATENT_DTYPES:
        raise ValueError(f"dtype must be one of {LATENT_DTYPES}, got {dtype!r}")
    if clips_per_video < 1 or batch_size < 1:
        raise ValueError(f"clips_per_video and batch_size must be positive, got {clips_per_video}, {batch_size}")
    if os.path.isfile(os.path.join(out_dir, METADATA)):
        raise FileExistsError(f"{out_dir} already holds a latent cache ({METADATA}); choose another folder or delete it")
    os.makedirs(out_dir, exist_ok=True)
    data = config.data
    clips = clip_config(data)
    source, _, clip_caption = video_sources(data)
    codec = latent_codec(config)
    text = text_conditioning(config.get("text_encoder"), data.text_len, config.unet.cross_attention_dim)
    devices = jax.local_devices()
    rows = NamedSharding(Mesh(np.asarray(devices), ("data",)), PartitionSpec("data"))
    process, processes = jax.process_index(), jax.process_count()
    pairs = [(video, draw) for video in range(len(source)) for draw in range(clips_per_video)][process::processes]
    key = jax.random.fold_in(jax.random.key(seed), process)

    def records() -> Iterator[bytes]:
        bar = tqdm.tqdm(total=len(pairs), desc="encoding clips", unit=" clips", disable=not show_progress)
        for batch_index, start in enumerate(range(0, len(pairs), batch_size)):
            batch = [
                make_clip(source[v], clips, np.random.default_rng([seed, v, d]), clip_caption) for v, d in pairs[start : start + batch_size]
            ]
            videos = np.stack([clip["video"] for clip in batch])  # (B, F, H, W, 3)
            frames = videos.reshape(-1, *videos.shape[2:])
            padding = -len(frames) % len(devices)  # rows split evenly over the local devices
            frames = np.concatenate([frames, np.repeat(frames[-1:], padding, axis=0)])
            latents = np.asarray(codec.encode(jax.device_put(frames, rows), jax.random.fold_in(key, batch_index)))
            latents = latents[: len(frames) - padding].reshape(*videos.shape[:2], *latents.shape[1:]).astype(dtype)
            captions = text.caption_transform([clip["caption"] for clip in batch])
            for i, clip in enumerate(batch):
                arrays = {
                    "latents": latents[i],
                    "first_frame_latent": latents[i, :1],
                    text.caption_key: np.asarray(captions[i]),
                    "frame_stride": np.asarray(clip["frame_stride"], np.float32),
                }
                yield encode_record(arrays, clip["caption"])
            bar.update(len(batch))
        bar.close()

    write_shard(shard_path(out_dir, process, processes), records())
    wait_for_all_processes("latent cache written")
    count = len(source) * clips_per_video
    latent_shape = [data.frames, data.latent_size, data.latent_size, data.latent_channels]
    metadata = {
        "count": count,
        "files": [os.path.basename(shard_path(out_dir, p, processes)) for p in range(processes)],
        "latent_shape": latent_shape,
        "dtype": dtype,
        "clips_per_video": clips_per_video,
        "seed": seed,
        "source": {"kind": data.get("source", "moving_shapes"), "dir": os.path.abspath(data.dir)},
        **cache_settings(config, text.caption_key),
    }
    if process == 0:
        write_metadata(out_dir, metadata)
    return metadata
