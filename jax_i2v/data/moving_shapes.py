"""Synthetic "moving shapes" videos with captions and per-frame ground truth.

1-3 shapes (circle / square / triangle) of random colour and size on a plain or gradient
background move at constant velocity along one of four directions and bounce off the borders.
The caption names each shape, its colour and its initial direction: "a red circle moves left, a
blue square moves down"; `clip_caption` describes any clip of a video the same way. Every example
is a pure function of (seed, index).

quality="degraded" renders the same scene as "clean" and then blurs it, adds pixel noise and a
semi-transparent watermark: MCM's setting of low-quality training videos, for the teacher, next to
high-quality images for its discriminator.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
# Unit velocity per direction in (x, y) image coordinates (y grows downwards).
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
DIRECTION_NAMES = tuple(DIRECTIONS)
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
QUALITIES = ("clean", "degraded")
# The degradation, in pixels of a 32-pixel frame (scaled with the resolution) and 0-255 levels.
BLUR_SIGMA = 0.8
NOISE_STD = 10.0
WATERMARK_OPACITY = 0.4


@dataclasses.dataclass(frozen=True)
class MovingShapesConfig:
    num_frames: int = 32
    resolution: int = 32
    max_objects: int = 3
    min_radius: float = 0.08  # fractions of the resolution
    max_radius: float = 0.16
    min_speed: float = 0.02  # fraction of the resolution per frame
    max_speed: float = 0.05
    quality: str = "clean"  # or "degraded"
    blur_sigma: float = BLUR_SIGMA  # of "degraded" videos, px of a 32-px frame

    def __post_init__(self):
        if self.num_frames < 2 or self.resolution < 8 or not 1 <= self.max_objects <= 3:
            raise ValueError(f"need num_frames >= 2, resolution >= 8, 1 <= max_objects <= 3; got {self}")
        if not 0 < self.min_radius <= self.max_radius < 0.5 or not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"bad radius or speed range in {self}")
        if self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if self.quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES}, got {self.quality!r}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark plain colour or a gradient between two dark colours, (size, size, 3) float."""
    start = rng.uniform(0, 110, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(start, (size, size, 3)).copy()
    end = rng.uniform(0, 110, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None]
    line = start + ramp * (end - start)  # (size, 3)
    return np.broadcast_to(line[:, None, :] if rng.random() < 0.5 else line[None, :, :], (size, size, 3)).copy()


def _shape_mask(kind: str, cx: float, cy: float, radius: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    if kind == "square":
        return (np.abs(xs - cx) <= radius) & (np.abs(ys - cy) <= radius)
    # Upward triangle inscribed in the square of half-side `radius`.
    rel_y = ys - (cy - radius)
    return (rel_y >= 0) & (rel_y <= 2 * radius) & (np.abs(xs - cx) <= rel_y / 2)


def _trajectory(start: float, velocity: float, radius: float, size: int, frames: int) -> np.ndarray:
    """Centre positions along one axis with reflections at the borders."""
    low, high = radius, size - 1 - radius
    positions = np.empty(frames)
    p, v = start, velocity
    for t in range(frames):
        positions[t] = p
        p += v
        if p < low:
            p, v = 2 * low - p, -v
        elif p > high:
            p, v = 2 * high - p, -v
    return positions


def describe(shapes, colours, directions) -> str:
    """The caption of objects given by indices into SHAPES / COLOUR_NAMES / DIRECTION_NAMES."""
    return ", ".join(
        f"{_article(COLOUR_NAMES[c])} {COLOUR_NAMES[c]} {SHAPES[s]} moves {DIRECTION_NAMES[d]}"
        for s, c, d in zip(shapes, colours, directions)
    )


def directions_at(positions: np.ndarray, directions: np.ndarray, start: int, end: int) -> np.ndarray:
    """Each object's direction of motion from frame `start` to frame `end`, as DIRECTION_NAMES indices.

    Objects move along the axis of their initial direction and reverse at the borders, so a clip
    that starts after a bounce moves the other way; an object that has not moved keeps its direction.
    positions: (T, N, 2); directions: (N,) initial directions (padding -1 stays -1).
    """
    result = np.array(directions, np.int32)
    for i, d in enumerate(directions):
        if d < 0:
            continue
        unit = np.asarray(DIRECTIONS[DIRECTION_NAMES[d]])
        step = float(np.dot(positions[end, i] - positions[start, i], unit))
        if step < 0:
            result[i] = DIRECTION_NAMES.index(_OPPOSITE[DIRECTION_NAMES[d]])
    return result


def reverse_directions(caption: str) -> str:
    """The caption with every direction word replaced by its opposite (a caption the clip contradicts)."""
    return re.sub(r"\b(left|right|up|down)\b", lambda m: _OPPOSITE[m.group(1)], caption)


def clip_caption(example: dict, frame_indices: np.ndarray) -> str:
    """The caption of the clip `video[frame_indices]` of an example: each object with the direction
    it moves at the clip's first step (training clips start anywhere, also after bounces)."""
    n = int(example["num_objects"])
    start, end = int(frame_indices[0]), int(frame_indices[1])
    directions = directions_at(np.asarray(example["positions"]), np.asarray(example["directions"]), start, end)
    return describe(np.asarray(example["shapes"])[:n], np.asarray(example["colours"])[:n], directions[:n])


def watermark(size: int) -> np.ndarray:
    """The watermark's coverage, (size, size) in [0, 1]: a cross of two diagonal bars in the
    lower-right quarter, the same in every video."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    inside = (ys > 0.55) & (ys < 0.95) & (xs > 0.55) & (xs < 0.95)
    bar = 0.05
    cross = (np.abs((ys - 0.55) - (xs - 0.55)) < bar) | (np.abs((ys - 0.55) - (0.95 - xs)) < bar)
    return (inside & cross).astype(np.float32)


def gaussian_blur(video: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):  # H, W of (T, H, W, 3), edges replicated
        padded = np.pad(video, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        video = sum(w * np.take(padded, np.arange(i, i + video.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return video


def degrade(video: np.ndarray, rng: np.random.Generator, blur_sigma: float = BLUR_SIGMA) -> np.ndarray:
    """(T, S, S, 3) uint8 -> the same, blurred, noisy and watermarked (white at WATERMARK_OPACITY)."""
    size = video.shape[1]
    frames = gaussian_blur(video.astype(np.float64), blur_sigma * size / 32)
    frames = frames + rng.normal(0.0, NOISE_STD, frames.shape)
    cover = WATERMARK_OPACITY * watermark(size)[None, :, :, None]
    frames = (1.0 - cover) * frames + cover * 255.0
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def generate_example(seed: int, index: int, config: MovingShapesConfig = MovingShapesConfig()) -> dict:
    """One example.

    video: (T, S, S, 3) uint8; caption: str; num_objects: int; shapes, colours, directions:
    (max_objects,) int indices into SHAPES / COLOUR_NAMES / DIRECTION_NAMES (padding -1);
    positions: (T, max_objects, 2) float32 centres (x, y) in pixels (padding 0); masks:
    (T, max_objects, S, S) uint8, the visible pixels of each object after occlusion by later ones.
    """
    rng = np.random.default_rng([seed, index])
    size, frames, max_objects = config.resolution, config.num_frames, config.max_objects
    n = int(rng.integers(1, max_objects + 1))
    shapes = np.full(max_objects, -1, np.int32)
    colours = np.full(max_objects, -1, np.int32)
    directions = np.full(max_objects, -1, np.int32)
    positions = np.zeros((frames, max_objects, 2), np.float32)
    colour_choice = rng.choice(len(COLOUR_NAMES), size=n, replace=False)
    radii = []
    for i in range(n):
        shapes[i] = rng.integers(len(SHAPES))
        colours[i] = colour_choice[i]
        directions[i] = rng.integers(len(DIRECTION_NAMES))
        radius = rng.uniform(config.min_radius, config.max_radius) * size
        speed = rng.uniform(config.min_speed, config.max_speed) * size
        vx, vy = DIRECTIONS[DIRECTION_NAMES[directions[i]]]
        # Leave room to move in the captioned direction for a quarter of the clip (at least one
        # step) before the first bounce, so the caption describes the visible start of the motion.
        low, high = radius, size - 1 - radius
        room = min(speed * max(frames // 4, 1), (high - low) / 2)
        start = rng.uniform(low, high, 2)
        for axis, v in ((0, vx), (1, vy)):
            if v > 0:
                start[axis] = rng.uniform(low, high - room)
            elif v < 0:
                start[axis] = rng.uniform(low + room, high)
        positions[:, i, 0] = _trajectory(start[0], vx * speed, radius, size, frames)
        positions[:, i, 1] = _trajectory(start[1], vy * speed, radius, size, frames)
        radii.append(radius)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    background = _background(rng, size)
    video = np.empty((frames, size, size, 3), np.uint8)
    masks = np.zeros((frames, max_objects, size, size), np.uint8)
    for t in range(frames):
        frame = background.copy()
        covered = np.zeros((size, size), bool)
        for i in reversed(range(n)):  # later objects are on top: paint from the top down
            mask = _shape_mask(SHAPES[shapes[i]], positions[t, i, 0], positions[t, i, 1], radii[i], ys, xs) & ~covered
            frame[mask] = COLOURS[COLOUR_NAMES[colours[i]]]
            masks[t, i] = mask
            covered |= mask
        video[t] = np.round(frame).astype(np.uint8)
    if config.quality == "degraded":
        video = degrade(video, rng, config.blur_sigma)
    return dict(
        video=video,
        caption=describe(shapes[:n], colours[:n], directions[:n]),
        num_objects=np.int32(n),
        shapes=shapes,
        colours=colours,
        directions=directions,
        positions=positions,
        masks=masks,
    )
