"""Per-video consistency and motion metrics against the moving-shapes ground truth.

Objects are tracked in a generated video by their first-frame colour: object i's colour c_i is the
mean of the video's frame 0 over the object's ground-truth mask; in every frame, its region is the
pixels whose colour is nearer to c_i than to any other object's colour and within
`COLOUR_TOLERANCE` of it. Positions are region centroids (x, y) in pixels; the ground-truth
positions are the centroids of the ground-truth visible masks, computed the same way, so a video
equal to the ground truth scores exactly zero error.

Metrics (frames t >= 1 against frame 0; distances in pixels are divided by the image size):
- appearance_drift: mean |mean colour of the region - c_i| / 255; where the object is lost (empty
  region) the colour found inside its ground-truth mask is used instead, so vanishing counts.
- background_psnr: PSNR (dB, capped at 100) over pixels no object covers in the ground truth at
  frame 0 or t, against the given first frame.
- motion_error: mean distance between tracked and ground-truth centroids.
- direction_accuracy: fraction of objects whose displacement (from frame 0 to the last frame in
  which the ground truth shows the object) has cosine > 0.5 with the captioned direction; a
  displacement under half a pixel counts as wrong.
- smoothness: mean |c(t+1) - 2 c(t) + c(t-1)|, the second difference of the tracked centroids.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jax_i2v.data.moving_shapes import DIRECTION_NAMES, DIRECTIONS

COLOUR_TOLERANCE = 60.0  # RGB distance (0-255); the synthetic palette is >= 70 away from any background
PSNR_CAP = 100.0
METRICS = ("appearance_drift", "background_psnr", "motion_error", "direction_accuracy", "smoothness")


def _centroids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, S, S) bool -> centroids (T, N, 2) as (x, y) and a (T, N) bool 'non-empty' flag."""
    size = masks.shape[-1]
    ys, xs = np.mgrid[0:size, 0:size]
    counts = masks.sum(axis=(-2, -1))
    safe = np.maximum(counts, 1)
    cx = (masks * xs).sum(axis=(-2, -1)) / safe
    cy = (masks * ys).sum(axis=(-2, -1)) / safe
    return np.stack([cx, cy], axis=-1), counts > 0


def track_objects(video: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Regions (T, N, S, S) bool of N objects of known colours (N, 3) in a (T, S, S, 3) video."""
    distance = np.linalg.norm(video[:, :, :, None, :].astype(np.float64) - colours[None, None, None], axis=-1)
    nearest = distance.argmin(axis=-1)
    close = distance.min(axis=-1) < COLOUR_TOLERANCE
    regions = (nearest[..., None] == np.arange(len(colours))) & close[..., None]
    return np.moveaxis(regions, -1, 1)


def _fill_lost(positions: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Lost objects stay where they were last seen."""
    positions = positions.copy()
    for t in range(1, len(positions)):
        positions[t][~found[t]] = positions[t - 1][~found[t]]
    return positions


def video_metrics(video: np.ndarray, first_frame: np.ndarray, masks: np.ndarray, directions: np.ndarray) -> dict[str, float]:
    """Metrics of one (T, S, S, 3) uint8 video.

    first_frame: (S, S, 3) uint8, the conditioning frame; masks: (T, N, S, S) ground-truth visible
    masks of the N objects; directions: (N,) indices into DIRECTION_NAMES (the caption's).
    """
    video = np.asarray(video)
    masks = np.asarray(masks).astype(bool)
    size = video.shape[1]
    frames = video.astype(np.float64)
    covered = masks.any(axis=1)
    present = masks[0].any(axis=(-2, -1))  # objects fully hidden at frame 0 cannot be tracked by colour
    masks, directions = masks[:, present], np.asarray(directions)[present]
    colours = np.stack([frames[0][m].mean(axis=0) for m in masks[0]]) if len(directions) else np.zeros((0, 3))
    background = ~covered[1:] & ~covered[:1]
    mse = ((frames[1:] - first_frame[None].astype(np.float64)) ** 2).mean(axis=-1)[background].mean() if background.any() else 0.0
    psnr = min(PSNR_CAP, 10 * np.log10(255.0**2 / mse)) if mse > 0 else PSNR_CAP
    if not len(directions):
        return {
            "appearance_drift": 0.0,
            "background_psnr": float(psnr),
            "motion_error": 0.0,
            "direction_accuracy": float("nan"),
            "smoothness": 0.0,
        }

    regions = track_objects(video, colours)
    tracked, found = _centroids(regions)
    tracked = _fill_lost(tracked, found)
    truth, visible = _centroids(masks)

    drift = []
    for t in range(1, len(video)):
        for i in range(len(colours)):
            where = regions[t, i] if found[t, i] else masks[t, i]
            if where.any():
                drift.append(np.linalg.norm(frames[t][where].mean(axis=0) - colours[i]) / 255.0)
    errors = np.linalg.norm(tracked - truth, axis=-1)[1:][visible[1:]] / size
    # Up to the last frame in which the object is visible in the ground truth (occlusion).
    last = np.array([np.flatnonzero(visible[:, i])[-1] for i in range(len(directions))])
    judged = last > 0
    displacement = (tracked[last, np.arange(len(last))] - tracked[0])[judged]
    wanted = np.array([DIRECTIONS[DIRECTION_NAMES[d]] for d in directions[judged]]).reshape(-1, 2)
    length = np.linalg.norm(displacement, axis=-1)
    cosine = (displacement * wanted).sum(-1) / np.maximum(length, 1e-9)
    correct = (length >= 0.5) & (cosine > 0.5)
    second = tracked[2:] - 2 * tracked[1:-1] + tracked[:-2]
    return {
        "appearance_drift": float(np.mean(drift)) if drift else 0.0,
        "background_psnr": float(psnr),
        "motion_error": float(errors.mean()) if errors.size else 0.0,
        "direction_accuracy": float(correct.mean()) if correct.size else float("nan"),
        "smoothness": float(np.linalg.norm(second, axis=-1).mean() / size) if len(second) else 0.0,
    }


def average(per_video: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over videos (ignoring NaN: videos without trackable objects)."""
    return {k: float(np.nanmean([m[k] for m in per_video])) for k in per_video[0]}
