"""Camera motion for FrameInit (ConsistI2V `pipe.py:56-113`): the input image becomes a pseudo-video
of crops that pan or zoom; its latents replace the static video inside FrameInit, so the initial
noise carries the camera motion in its low frequencies. Frame 0 is also the conditioning frame.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from jax_i2v import media

CAMERA_MOTIONS = ("pan_left", "pan_right", "zoom_in", "zoom_out")


def camera_motion_frames(image: np.ndarray, motion: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 image -> (num_frames, height, width, 3) uint8 crops.

    Pan: the image is resized to cover (height, width) and centred vertically; crop i starts at
    x_i = floor((W_img - width) i / F), and pan_left runs from the right edge.
    Zoom: the image is resized to cover twice the size and centre-cropped there (side m); crop i is
    centred with side m - floor((m - m // 1.5) i / F) (zoom_in) or m // 1.5 + floor(...) (zoom_out),
    then resized to the output size.
    """
    if motion not in CAMERA_MOTIONS:
        raise ValueError(f"camera motion must be one of {CAMERA_MOTIONS}, got {motion!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    frames = []
    if motion.startswith("pan"):
        covered = media.resize_to_cover(image, height, width)
        top = (covered.shape[0] - height) // 2
        room = covered.shape[1] - width
        if room == 0:
            warnings.warn(
                f"{motion}: the image has the output's aspect ratio, so there is no room to pan; use a wider image for visible motion"
            )
        for i in range(num_frames):
            fraction = i / num_frames if motion == "pan_right" else 1.0 - i / num_frames
            left = math.floor(room * fraction)
            frames.append(covered[top : top + height, left : left + width])
        return np.stack(frames)

    zoom_area = media.resize_and_center_crop(image, 2 * height, 2 * width)
    m = 2 * height
    smallest = m // 1.5
    for i in range(num_frames):
        shift = math.floor((m - smallest) * i / num_frames)
        side = m - shift if motion == "zoom_in" else smallest + shift
        scale = side / m
        frames.append(media.resize(media.center_crop(zoom_area, round(2 * height * scale), round(2 * width * scale)), height, width))
    return np.stack(frames)
