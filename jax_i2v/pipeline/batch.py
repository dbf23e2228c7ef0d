"""A pipeline call's inputs as rows of one batch, and each video's random keys.

Every random draw of video i (the first frame's posterior sample, the initial noise, the noise of
each step) comes from video i's own key, `jax.random.key(seeds[i])`, through vmapped splits and
fold-ins, so a video is the same whatever else is in its batch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence, Union

import jax
import numpy as np
from PIL import Image

from jax_i2v import media

Images = Union[media.ImageLike, Sequence[media.ImageLike]]
Prompts = Union[str, Sequence[str]]
Seeds = Union[int, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class VideoRows:
    """One row per video: each (image, prompt) pair repeated `num_videos_per_prompt` times."""

    images: list  # ImageLike per row
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    pair_of_row: np.ndarray  # (rows,) index of each row's (image, prompt) pair

    def __len__(self) -> int:
        return len(self.prompts)


def _as_list(value, single_types: tuple) -> list:
    """One value (of `single_types`, or an (H, W, 3) array) as a list of one; many as a list."""
    if isinstance(value, single_types) or (isinstance(value, np.ndarray) and value.ndim == 3):
        return [value]
    return list(value)  # a sequence, or a (B, H, W, 3) array


def video_rows(images: Images, prompts: Prompts, negative_prompts: Prompts, num_videos_per_prompt: int, seed: Seeds) -> VideoRows:
    """Broadcasts one or many images against one or many prompts (each 1 or N), repeats each pair
    `num_videos_per_prompt` times (pair 0's videos first), and gives video i the seed `seed + i`
    (an int) or `seed[i]` (one per video)."""
    image_list = _as_list(images, (str, os.PathLike, Image.Image))
    prompt_list, negative_list = _as_list(prompts, str), _as_list(negative_prompts, str)
    pairs = max(len(image_list), len(prompt_list), len(negative_list))
    for name, values in (("images", image_list), ("prompts", prompt_list), ("negative prompts", negative_list)):
        if len(values) not in (1, pairs):
            raise ValueError(f"got {len(values)} {name} for {pairs} videos: give one, or one per (image, prompt) pair")
    if num_videos_per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
    pair_of_row = np.repeat(np.arange(pairs), num_videos_per_prompt)
    seeds = video_seeds(seed, len(pair_of_row))

    def per_row(values):
        return [values[0 if len(values) == 1 else p] for p in pair_of_row]

    return VideoRows(per_row(image_list), per_row(prompt_list), per_row(negative_list), seeds, pair_of_row)


def video_seeds(seed: Seeds, num_videos: int) -> list[int]:
    """Video i's seed: `seed + i` for an int, else `seed[i]` (one per video)."""
    seeds = [seed + i for i in range(num_videos)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != num_videos:
        raise ValueError(f"got {len(seeds)} seeds for {num_videos} videos")
    if any(not 0 <= s < 2**31 for s in seeds):
        raise ValueError(f"seeds must be in [0, 2**31), got {seeds}")
    return seeds


def video_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """(encode keys, sampling keys), each (B,): the first frame's posterior sample and the sampler's draws."""
    keys = jax.vmap(jax.random.split)(jax.vmap(jax.random.key)(np.asarray(seeds, np.int32)))
    return keys[:, 0], keys[:, 1]


def chunk_keys(sampling_keys: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """(initial-noise keys, per-step keys), each (B,), of autoregressive chunk `chunk`."""
    keys = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, chunk)))(sampling_keys)
    return keys[:, 0], keys[:, 1]
