"""Writing sampled videos to files."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jax_i2v import media


def save_videos(frames: np.ndarray, prefix: str, formats: Sequence[str] = media.VIDEO_FORMATS, fps: float = 8.0) -> list[str]:
    """Writes each video of a (B, T, H, W, 3) batch as `{prefix}_{i}.{fmt}` (or `{prefix}.{fmt}` for B = 1)."""
    paths = []
    for i, video in enumerate(frames):
        stem = prefix if len(frames) == 1 else f"{prefix}_{i}"
        paths += [media.write_video(f"{stem}.{fmt}", video, fps) for fmt in formats]
    return paths
