"""The moving-shapes dataset as a TFDS builder writing array_record files (no TensorFlow needed).

builder = build_moving_shapes("data/", train_examples=2000, test_examples=64)
source = builder.as_data_source(split="train")   # random access, read by Grain
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import tensorflow_datasets as tfds

from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.parallel.hosts import wait_for_all_processes

# Test examples use a different seed stream from training ones.
_SPLIT_SEED_OFFSET = {"train": 0, "test": 1_000_003}


_SHAPE_AND_MOTION = ("min_radius", "max_radius", "min_speed", "max_speed")


@dataclasses.dataclass
class MovingShapesBuilderConfig(tfds.core.BuilderConfig):
    num_frames: int = 32
    resolution: int = 32
    max_objects: int = 3
    train_examples: int = 2000
    test_examples: int = 64
    seed: int = 0
    # Object sizes and speeds, fractions of the resolution (per frame for speeds).
    min_radius: float = MovingShapesConfig.min_radius
    max_radius: float = MovingShapesConfig.max_radius
    min_speed: float = MovingShapesConfig.min_speed
    max_speed: float = MovingShapesConfig.max_speed
    quality: str = MovingShapesConfig.quality  # "degraded": blurred, noisy, watermarked videos
    blur_sigma: float = MovingShapesConfig.blur_sigma

    def generator_config(self) -> MovingShapesConfig:
        shape_and_motion = {name: getattr(self, name) for name in _SHAPE_AND_MOTION}
        return MovingShapesConfig(
            num_frames=self.num_frames,
            resolution=self.resolution,
            max_objects=self.max_objects,
            quality=self.quality,
            blur_sigma=self.blur_sigma,
            **shape_and_motion,
        )


class MovingShapes(tfds.core.GeneratorBasedBuilder):
    """Captioned videos of bouncing shapes with per-frame positions and masks."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MovingShapesBuilderConfig

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        t, s, n = c.num_frames, c.resolution, c.max_objects
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(shape=(t, s, s, 3), dtype=np.uint8),
                    "caption": tfds.features.Text(),
                    "num_objects": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "shapes": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                    "colours": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                    "directions": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                    "positions": tfds.features.Tensor(shape=(t, n, 2), dtype=np.float32),
                    "masks": tfds.features.Tensor(shape=(t, n, s, s), dtype=np.uint8),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        return {"train": self._generate_examples("train", c.train_examples), "test": self._generate_examples("test", c.test_examples)}

    def _generate_examples(self, split: str, count: int):
        c = self.builder_config
        config = c.generator_config()
        for index in range(count):
            yield index, generate_example(c.seed + _SPLIT_SEED_OFFSET[split], index, config)


def builder_config(**config) -> MovingShapesBuilderConfig:
    """A builder config from MovingShapesBuilderConfig fields (num_frames, resolution, max_objects,
    train_examples, test_examples, seed, min/max_radius, min/max_speed, quality, blur_sigma); its name encodes them, so
    different settings coexist."""
    fields = {f.name for f in dataclasses.fields(MovingShapesBuilderConfig)} - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"unknown moving-shapes settings {sorted(unknown)}; known: {sorted(fields)}")
    defaults = MovingShapesBuilderConfig(name="defaults")
    values = {name: config.get(name, getattr(defaults, name)) for name in sorted(fields)}
    name = "f{num_frames}_r{resolution}_o{max_objects}_n{train_examples}-{test_examples}_s{seed}".format(**values)
    if any(values[k] != getattr(defaults, k) for k in _SHAPE_AND_MOTION):  # default names stay as they were
        name += "_rad{min_radius:g}-{max_radius:g}_v{min_speed:g}-{max_speed:g}".format(**values)
    if values["quality"] != defaults.quality:
        name += "_" + values["quality"]
    if values["quality"] == "degraded" and values["blur_sigma"] != defaults.blur_sigma:
        name += "_blur{blur_sigma:g}".format(**values)
    result = MovingShapesBuilderConfig(name=name, **values)
    result.generator_config()  # bad settings fail here, before a build
    return result


def build_moving_shapes(data_dir: str, **config) -> MovingShapes:
    """Builds the dataset under `data_dir` (reusing a complete earlier build); returns the builder."""
    builder = MovingShapes(config=builder_config(**config), data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def build_moving_shapes_on_process_zero(data_dir: str, **config) -> None:
    """`build_moving_shapes` by process 0 while the others wait for it (every process then loads it)."""
    if jax.process_index() == 0:
        build_moving_shapes(data_dir, **config)
    wait_for_all_processes(f"moving shapes built in {data_dir}")


def load_moving_shapes(data_dir: str, split: str = "train", **config):
    """The random-access source of an already built dataset; a clear error when it is missing."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset directory {data_dir} does not exist (build it with build_moving_shapes)")
    config = builder_config(**config)
    builder = MovingShapes(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        raise FileNotFoundError(f"moving-shapes dataset {config.name} is not built under {data_dir}")
    return builder.as_data_source(split=split)
