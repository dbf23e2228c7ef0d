"""TFDS builders (array_record, no TensorFlow) for real video-text and image-text data.

    builder = build_media_dataset("data/", "webvid", layout="jsonl", jsonl="train.jsonl", video_folder="videos/")
    source = load_media_dataset(builder.data_dir)   # random access, read by Grain

Layouts (`jax_i2v.data.sources`): "jsonl" (ConsistI2V's JSONL + video folder), "webdataset" (MCM's
.tar shards of .mp4 + .json) and "images" (folders or shards of images + .txt / .caption).
Examples keep the encoded media as they came (decoded per clip at training time, so a dataset is
as large as its videos, not as their pixels) with the frame count, fps and size found by decoding
every frame once here, over `num_workers` processes with a progress bar. Bad inputs are skipped
and listed with their reasons in `manifest.json` beside the records; a build that is interrupted
leaves nothing that looks prepared, and running it again starts it afresh.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import shutil
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from jax_i2v.data import sources
from jax_i2v.data.sources import Skipped

log = logging.getLogger(__name__)

LAYOUTS = ("jsonl", "webdataset", "images")
MANIFEST = "manifest.json"


@dataclasses.dataclass
class MediaConfig(tfds.core.BuilderConfig):
    """The inputs of one dataset: the `name` is the user's (one folder per name under data_dir)."""

    layout: str = "jsonl"
    jsonl: str = ""  # "jsonl": the JSONL file
    video_folder: str = ""  # "jsonl": where its "file" paths are relative to
    paths: tuple = ()  # "webdataset": .tar shards or folders of them; "images": folders or shards
    min_frames: int = 2  # videos with fewer decodable frames are skipped as too_short
    num_workers: int = 0  # decoding processes (0: this process)

    def inputs(self) -> dict:
        """What the dataset was built from (checked when a build is reused)."""
        if self.layout == "jsonl":
            return {
                "layout": self.layout,
                "jsonl": os.path.abspath(self.jsonl),
                "video_folder": os.path.abspath(self.video_folder),
                "min_frames": self.min_frames,
            }
        inputs = {"layout": self.layout, "paths": [os.path.abspath(p) for p in self.paths]}
        return inputs if self.layout == "images" else {**inputs, "min_frames": self.min_frames}

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "jsonl":
            if not os.path.isfile(self.jsonl):
                raise FileNotFoundError(f"JSONL file not found: {self.jsonl!r}")
            if not os.path.isdir(self.video_folder):
                raise FileNotFoundError(f"video folder not found: {self.video_folder!r}")
        elif not self.paths:
            raise ValueError(f"the {self.layout} layout needs paths (shards or folders)")
        elif self.layout == "webdataset":
            sources.list_shards(self.paths)  # a missing path or a folder without shards fails here
        else:
            missing = [p for p in self.paths if not os.path.exists(p)]
            if missing:
                raise FileNotFoundError(f"no image folder or shard at {missing}")
        if not isinstance(self.min_frames, int) or self.min_frames < 1:
            raise ValueError(f"min_frames must be a positive integer, got {self.min_frames!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")


class _MediaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by the video and image builders: parallel preparation, skips, the manifest."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MediaConfig

    def _items(self) -> Iterator[sources.Item]:
        raise NotImplementedError

    def _prepare(self):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        config = self.builder_config
        self._skipped: list[dict] = []
        seen: set[str] = set()
        results = sources.ordered_map(self._prepare(), self._items(), config.num_workers)
        bar = tqdm.tqdm(results, desc=f"preparing {config.name}", unit=" inputs")
        for result in bar:
            if isinstance(result, Skipped):
                self._skipped.append(result.as_dict())
            elif result["key"] in seen:
                self._skipped.append(Skipped(result["source"], "duplicate_key", result["key"]).as_dict())
            else:
                seen.add(result["key"])
                key = result.pop("key")
                yield key, result
            bar.set_postfix(kept=len(seen), skipped=len(self._skipped), refresh=False)
        self._kept = len(seen)

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        # self.data_dir is still the temporary folder here, so the manifest lands with the records.
        counts = collections.Counter(skip["reason"] for skip in self._skipped)
        manifest = {
            "name": self.builder_config.name,
            "inputs": self.builder_config.inputs(),
            "kept": self._kept,
            "skipped": len(self._skipped),
            "skipped_by_reason": dict(sorted(counts.items())),
            "skipped_inputs": self._skipped,
        }
        with open(os.path.join(self.data_dir, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        if self._skipped:
            log.warning(
                "%s: kept %d inputs, skipped %d (%s); see %s",
                self.builder_config.name,
                self._kept,
                len(self._skipped),
                ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                MANIFEST,
            )


_VIDEO_FEATURES = {
    "video": tfds.features.Tensor(shape=(), dtype=np.object_),  # the encoded file, as it came
    "caption": tfds.features.Text(),
    "num_frames": tfds.features.Tensor(shape=(), dtype=np.int32),
    "fps": tfds.features.Tensor(shape=(), dtype=np.float32),
    "height": tfds.features.Tensor(shape=(), dtype=np.int32),
    "width": tfds.features.Tensor(shape=(), dtype=np.int32),
    "source": tfds.features.Text(),
}


class VideoText(_MediaBuilder):
    """Captioned videos from a JSONL file + video folder or from webdataset .tar shards."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=tfds.features.FeaturesDict(dict(_VIDEO_FEATURES)))

    def _items(self):
        config = self.builder_config
        if config.layout == "jsonl":
            return sources.jsonl_items(config.jsonl, config.video_folder)
        return sources.shard_items(sources.list_shards(config.paths), sources.VIDEO_EXTENSIONS)

    def _prepare(self):
        return functools.partial(sources.prepare_video, min_frames=self.builder_config.min_frames)


class ImageText(_MediaBuilder):
    """Captioned images (MCM's high-quality appearance data) from folders or .tar shards."""

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "caption": tfds.features.Text(),
            "height": tfds.features.Tensor(shape=(), dtype=np.int32),
            "width": tfds.features.Tensor(shape=(), dtype=np.int32),
            "source": tfds.features.Text(),
        }
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=tfds.features.FeaturesDict(features))

    def _items(self):
        return sources.image_items(self.builder_config.paths)

    def _prepare(self):
        return sources.prepare_image


def _builder_class(layout: str):
    return ImageText if layout == "images" else VideoText


def _remove_interrupted_builds(builder: tfds.core.DatasetBuilder) -> None:
    """Deletes the temporary folders a killed build of this dataset version left behind (TFDS
    renames its temporary folder only when a build completes)."""
    version_dir = os.fspath(builder.data_path)
    parent, version = os.path.split(version_dir.rstrip("/"))
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if name.startswith(tfds.core.constants.INCOMPLETE_PREFIX) and name.endswith("_" + version):
            log.warning("removing an interrupted build: %s", os.path.join(parent, name))
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def build_media_dataset(
    data_dir: str,
    name: str,
    layout: str,
    *,
    jsonl: str = "",
    video_folder: str = "",
    paths: Sequence[str] = (),
    min_frames: int = 2,
    num_workers: int = 0,
) -> tfds.core.DatasetBuilder:
    """Builds dataset `name` under `data_dir` (reusing a complete earlier build of the same inputs)."""
    config = MediaConfig(
        name=name,
        layout=layout,
        jsonl=jsonl,
        video_folder=video_folder,
        paths=tuple(os.fspath(p) for p in paths),
        min_frames=min_frames,
        num_workers=num_workers,
    )
    config.validate()
    builder = _builder_class(layout)(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if builder.is_prepared():
        built = read_manifest(builder.data_dir)["inputs"]
        if built != config.inputs():
            raise ValueError(
                f"dataset {name!r} under {data_dir} was built from {built}, not {config.inputs()}; choose another name or delete it"
            )
        return builder
    _remove_interrupted_builds(builder)
    builder.download_and_prepare()
    return builder


def read_manifest(dataset_dir: str) -> dict:
    """The manifest of a built dataset folder (DATA_DIR/{video_text,image_text}/NAME/1.0.0)."""
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {MANIFEST} in {dataset_dir}: not a dataset built by jax_i2v.data.media_tfds")
    with open(path) as f:
        return json.load(f)


def load_media_dataset(dataset_dir: str, split: str = "train"):
    """The random-access source of a built dataset folder (as printed by the build)."""
    if not os.path.isfile(os.path.join(dataset_dir, "dataset_info.json")):
        raise FileNotFoundError(f"no built dataset at {dataset_dir} (build it with launch/build_dataset.py)")
    return tfds.builder_from_directory(dataset_dir).as_data_source(split=split)
