"""A video dataset encoded once: clip latents, caption conditioning, first-frame latent and stride.

Layout of a cache folder:
- `clips-PPPPP-of-NNNNN.array_record`: one file per writing process; each record is a safetensors
  blob of {"latents": (F, h, w, C), "first_frame_latent": (1, h, w, C) (= latents[:1], the
  conditioning frame, kept apart so sampling and previews read it without the clip),
  CAPTION_KEY: what the experiment's caption transform gives (CLIP embeddings (L, D) for a frozen
  encoder, token ids (L,) for a trainable one), "frame_stride": (), "caption": UTF-8 bytes};
- `metadata.json`, written last: the count, shapes, and the experiment settings the latents depend on
  (codec, text encoder, clip sampling), which training checks against its own config.

Clip sampling (stride, start, flip, crop) happens when the cache is written, `clips_per_video`
draws per video: a flip or crop of latents is not the latent of the flipped or cropped clip.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import grain
import numpy as np
import safetensors.numpy
from array_record.python.array_record_module import ArrayRecordWriter

from jax_i2v.data.video_pipeline import clip_config

METADATA = "metadata.json"
LATENT_DTYPES = ("float32", "float16")


def shard_path(folder: str, process: int, processes: int) -> str:
    return os.path.join(folder, f"clips-{process:05d}-of-{processes:05d}.array_record")


def encode_record(arrays: dict[str, np.ndarray], caption: str) -> bytes:
    return safetensors.numpy.save({**arrays, "caption": np.frombuffer(caption.encode("utf-8"), np.uint8)})


def decode_record(record: bytes) -> dict[str, Any]:
    example = safetensors.numpy.load(record)
    example["caption"] = example["caption"].tobytes().decode("utf-8")
    return example


def write_shard(path: str, records: Iterable[bytes]) -> int:
    """Writes records to `path` through a temporary name, so a file that exists is complete."""
    partial = path + ".partial"
    writer = ArrayRecordWriter(partial, "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(record)
            count += 1
    finally:
        writer.close()
    os.replace(partial, path)
    return count


def write_metadata(folder: str, metadata: dict) -> None:
    with open(os.path.join(folder, METADATA), "w") as f:
        json.dump(metadata, f, indent=1)


def read_metadata(folder: str) -> dict:
    path = os.path.join(folder, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no latent cache at {folder} ({METADATA} missing: write one with launch/cache_latents.py)")
    with open(path) as f:
        return json.load(f)


class LatentCacheSource:
    """Random access to a cache folder's clips (decoded records), for Grain."""

    def __init__(self, folder: str):
        self.metadata = read_metadata(folder)
        paths = [os.path.join(folder, name) for name in self.metadata["files"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"latent cache {folder} lacks {missing}")
        self._records = grain.sources.ArrayRecordDataSource(paths)
        if len(self._records) != self.metadata["count"]:
            raise ValueError(f"latent cache {folder} holds {len(self._records)} clips, its metadata says {self.metadata['count']}")

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self._records[index])


def check_matches(metadata: dict, expected: dict[str, Any], folder: str) -> None:
    """Raises naming every setting in which the cache differs from the experiment (`expected`)."""
    differences = [f"{key}: cache {metadata.get(key)!r}, config {value!r}" for key, value in expected.items() if metadata.get(key) != value]
    if differences:
        raise ValueError(f"latent cache {folder} does not fit this config; " + "; ".join(differences))


def cache_settings(config, caption_key: str) -> dict[str, Any]:
    """What cached latents depend on; a cache is used only by configs that agree on all of it."""

    def section(name):
        value = config.get(name)
        return None if value is None else value.to_dict()

    settings = {
        "codec": section("codec"),
        "text_encoder": section("text_encoder"),
        "caption_key": caption_key,
        "text_len": config.data.text_len,
        "clips": dataclasses.asdict(clip_config(config.data)),
    }
    return json.loads(json.dumps(settings))  # as metadata.json holds them: tuples are lists
