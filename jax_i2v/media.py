"""Images in, videos out: loading and resizing first frames, writing GIF / MP4.

Images are uint8 `(H, W, 3)` NumPy arrays on the host; model-range pixels are float32 in [-1, 1];
output frames are float in [0, 1] or uint8, `(T, H, W, 3)`.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import imageio.v3 as iio
import numpy as np
from PIL import Image

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]
VIDEO_FORMATS = ("gif", "mp4")


def load_image(image: ImageLike) -> np.ndarray:
    """A path, PIL image or array ((H, W, 3) uint8, or float in [0, 1]) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image not found: {image}")
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image array must be (H, W, 3) RGB, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError("float image arrays must lie in [0, 1]")
        return np.round(array * 255.0).astype(np.uint8)
    raise ValueError(f"image array must be uint8 or float, got {array.dtype}")


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking, like torchvision on PIL images)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_to_cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smallest aspect-preserving resize whose height >= `height` and width >= `width`."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    return resize(image, max(height, round(h * scale)), max(width, round(w * scale)))


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < height or w < width:
        raise ValueError(f"cannot crop {height}x{width} from a {h}x{w} image")
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def resize_and_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's first-frame transform: resize the short side, then centre-crop."""
    return center_crop(resize_to_cover(image, height, width), height, width)


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator, ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as torchvision's RandomResizedCrop draws it: an area
    fraction in `scale` and a log-uniform aspect ratio, ten tries, then the centre crop whose
    aspect ratio is clamped to `ratio`."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (values outside are clipped) or uint8 -> uint8."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def video_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """Equal-shaped (T, H, W, 3) videos laid out rows x columns, each pixel repeated `scale` times
    and neighbours `gap` black pixels apart -> one (T, H', W', 3) uint8 video."""
    cells = [[np.repeat(np.repeat(to_uint8(v), scale, axis=1), scale, axis=2) for v in row] for row in rows]
    t, h, w, _ = cells[0][0].shape
    grid = np.zeros((t, len(cells) * (h + gap) - gap, max(map(len, cells)) * (w + gap) - gap, 3), np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            grid[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = cell
    return grid


def check_video_size(height: int, width: int, formats=VIDEO_FORMATS) -> None:
    """H.264 in yuv420p needs even sizes; fail before sampling rather than after."""
    if "mp4" in formats and (height % 2 or width % 2):
        raise ValueError(f"MP4 output needs an even height and width, got {height}x{width}")


def write_video(path: str, frames: np.ndarray, fps: float = 8.0) -> str:
    """Writes (T, H, W, 3) frames to `path`; the format follows the suffix (.gif or .mp4)."""
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"video path must end in one of {VIDEO_FORMATS}, got {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == "gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        check_video_size(*frames.shape[1:3])
        iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")
    return path
