"""How much of the degraded moving shapes' damage (blur, noise, watermark; `moving_shapes.degrade`)
a model's frames carry: MCM's claim is that a student whose discriminator sees clean images makes
sharper, cleaner frames than its teacher trained on the degraded videos.

- sharpness: how steep the edges are for their contrast. After a 3x3 median filter (which keeps
  step edges and removes most pixel noise, which would otherwise pass for detail), the luminance
  gradient magnitude over the contrast (max - min) of the 5x5 neighbourhood, at pixels whose
  contrast exceeds EDGE_CONTRAST, outside the watermark's box (grown by MARK_MARGIN px); the 90th
  percentile per frame, averaged over frames 2..F. A step edge scores 0.5 (central differences), a
  blurred one less, whatever the colours. The watermark is pasted after the blur, so its edges are
  the sharpest in a degraded frame: counted, they made blurred and clean frames score alike
  (32 test clips through the tiny codec: 0.397 against 0.404; without them 0.333 against 0.385).
- watermark: mean luminance (/255) of the watermark's pixels minus that of the other pixels of its
  bounding box, over pixels no object covers in the ground truth, averaged over frames 2..F. The
  clean videos score about 0; the degraded ones about 0.4 (255 - background) / 255.
"""

from __future__ import annotations

import numpy as np

from jax_i2v.data.moving_shapes import watermark

SHARPNESS_PERCENTILE = 90
EDGE_CONTRAST = 40.0  # luminance levels: above the noise, below any object-background contrast
MARK_MARGIN = 2  # px around the watermark's box left out of sharpness (the 5x5 contrast window reaches 2 px)
QUALITY_METRICS = ("sharpness", "watermark")


def _luminance(video: np.ndarray) -> np.ndarray:
    return np.asarray(video, np.float64) @ np.array([0.299, 0.587, 0.114])


def _windows(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W) -> (T, H, W, size, size) neighbourhoods, edges replicated."""
    pad = size // 2
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))


def _watermark_box(size: int, margin: int = 0) -> np.ndarray:
    """(size, size) bool: the watermark's bounding box grown by `margin` px."""
    mark = watermark(size).astype(bool)
    rows, cols = np.flatnonzero(mark.any(axis=1)), np.flatnonzero(mark.any(axis=0))
    box = np.zeros_like(mark)
    box[max(rows[0] - margin, 0) : rows[-1] + 1 + margin, max(cols[0] - margin, 0) : cols[-1] + 1 + margin] = True
    return box


def sharpness(video: np.ndarray) -> float:
    """(T, S, S, 3) uint8 -> edge steepness in [0, 0.5], averaged over frames 1.. (nan without edges)."""
    denoised = np.median(_windows(_luminance(video)[1:], 3), axis=(-2, -1))
    gy, gx = np.gradient(denoised, axis=(1, 2))
    windows = _windows(denoised, 5)
    contrast = windows.max(axis=(-2, -1)) - windows.min(axis=(-2, -1))
    judged = ~_watermark_box(video.shape[1], MARK_MARGIN)
    values = []
    for gradient, local in zip(np.hypot(gx, gy), contrast):
        edges = (local > EDGE_CONTRAST) & judged
        if edges.any():
            values.append(np.percentile(gradient[edges] / local[edges], SHARPNESS_PERCENTILE))
    return float(np.mean(values)) if values else float("nan")


def watermark_strength(video: np.ndarray, masks: np.ndarray) -> float:
    """(T, S, S, 3) uint8 video, (T, N, S, S) ground-truth masks -> the watermark's mean luminance
    excess / 255 over frames 1.. (nan where objects hide it in every frame)."""
    size = video.shape[1]
    mark = watermark(size).astype(bool)
    box = _watermark_box(size)
    luminance = _luminance(video)
    free = ~np.asarray(masks, bool).any(axis=1)
    excess = []
    for t in range(1, len(video)):
        inside, outside = mark & free[t], box & ~mark & free[t]
        if inside.any() and outside.any():
            excess.append(luminance[t][inside].mean() - luminance[t][outside].mean())
    return float(np.mean(excess) / 255.0) if excess else float("nan")


def frame_quality(video: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"sharpness": sharpness(video), "watermark": watermark_strength(video, masks)}
