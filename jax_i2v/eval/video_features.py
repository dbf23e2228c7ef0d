"""A small video encoder trained on moving-shapes clips, for a Frechet distance between clip sets
(`fvd_proxy`, a CPU-sized stand-in for FVD's I3D features).

The encoder sees a clip (resized to 32x32, any number of frames) together with its frame
differences, runs three 3D convolutions with spatial pooling and averages over space and time into
a 64-d feature. It is trained (`launch/train_video_features.py`) to name, for each of up to three
object slots, the object's shape, colour and captioned direction, so its features encode what the
benchmark cares about: which objects are there, how they look and where they go. The trained
weights ship with the package (`jax_i2v/eval/weights/video_features.safetensors`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

from jax_i2v.data.moving_shapes import COLOUR_NAMES, DIRECTION_NAMES, SHAPES

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "video_features.safetensors")
INPUT_SIZE = 32
MAX_OBJECTS = 3
# Per slot: the attribute's classes plus "no object".
HEAD_CLASSES = {"shape": len(SHAPES) + 1, "colour": len(COLOUR_NAMES) + 1, "direction": len(DIRECTION_NAMES) + 1}


class VideoFeatureNet(nn.Module):
    """(B, F, H, W, 3) in [-1, 1] -> (features (B, width), logits {head: (B, MAX_OBJECTS, classes)})."""

    width: int = 64

    @nn.compact
    def __call__(self, video):
        b, f, h, w, _ = video.shape
        if (h, w) != (INPUT_SIZE, INPUT_SIZE):
            video = jax.image.resize(video, (b, f, INPUT_SIZE, INPUT_SIZE, 3), "linear")
        motion = jnp.concatenate([jnp.zeros_like(video[:, :1]), video[:, 1:] - video[:, :-1]], axis=1)
        x = jnp.concatenate([video, motion], axis=-1)
        for channels in (16, 32, self.width):
            x = nn.gelu(nn.Conv(channels, (3, 3, 3), padding="SAME")(x))
            x = nn.avg_pool(x, (1, 2, 2), (1, 2, 2))
        features = x.mean(axis=(1, 2, 3))
        logits = {
            name: nn.Dense(MAX_OBJECTS * classes, name=f"{name}_head")(features).reshape(b, MAX_OBJECTS, classes)
            for name, classes in HEAD_CLASSES.items()
        }
        return features, logits


def attribute_labels(shapes: np.ndarray, colours: np.ndarray, directions: np.ndarray) -> dict[str, np.ndarray]:
    """Generator metadata ((B, MAX_OBJECTS), -1 = no object) -> class ids with "no object" last."""
    labels = {}
    for name, values in (("shape", shapes), ("colour", colours), ("direction", directions)):
        values = np.asarray(values)[:, :MAX_OBJECTS]
        labels[name] = np.where(values < 0, HEAD_CLASSES[name] - 1, values).astype(np.int32)
    return labels


def to_model_input(videos_uint8: np.ndarray) -> jax.Array:
    return jnp.asarray(videos_uint8, jnp.float32) / 127.5 - 1.0


def save_weights(path: str, params: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}, path)


@functools.partial(jax.jit, static_argnums=0)
def _features(module, params, videos):
    return module.apply({"params": params}, videos)[0]


@dataclasses.dataclass
class VideoFeatures:
    module: VideoFeatureNet
    params: Any

    @classmethod
    def load(cls, path: str = WEIGHTS) -> "VideoFeatures":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video feature weights not found: {path} (train them with launch/train_video_features.py)")
        params = unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in load_file(path).items()})
        return cls(VideoFeatureNet(), params)

    def features(self, videos_uint8: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, F, H, W, 3) uint8 -> (N, width) float64."""
        chunks = [
            np.asarray(_features(self.module, self.params, to_model_input(videos_uint8[i : i + batch_size])))
            for i in range(0, len(videos_uint8), batch_size)
        ]
        return np.concatenate(chunks).astype(np.float64)

    def frechet_distance(self, videos_a: np.ndarray, videos_b: np.ndarray) -> float:
        return frechet_distance(self.features(videos_a), self.features(videos_b))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least two clips per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = root.real  # numerical noise can leave tiny imaginary parts
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root)))
