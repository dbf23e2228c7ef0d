"""Decoding videos (PyAV, FFmpeg bundled) and images (PIL) from bytes, with failures as reasons.

Every failure a dataset build can meet is a `SkipReason` with a short code (what the manifest
counts) and a detail (what went wrong, for a person). Only NumPy, PyAV and PIL are imported here,
so the build's worker processes start quickly.

Videos are `(T, H, W, 3)` uint8 RGB; images `(H, W, 3)` uint8 RGB.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import tempfile
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

# The codes a manifest counts.
REASONS = (
    "bad_jsonl_line",  # not JSON, or without a "file" / "text" string
    "missing_file",  # the listed video file does not exist
    "unreadable_file",  # exists but cannot be read (permissions, a directory, an I/O error)
    "empty_file",  # zero bytes
    "corrupt_video",  # FFmpeg cannot open or decode it
    "no_video_stream",  # a container without video (audio only)
    "truncated_video",  # fewer frames decode than the container declares
    "too_short",  # fewer frames than the build's min_frames
    "missing_caption",  # no caption (JSONL text, webdataset .json "caption", image .txt/.caption)
    "missing_media",  # a webdataset / image-set sample with a caption but no video or image
    "corrupt_image",  # PIL cannot decode it (base64 text included)
    "corrupt_shard",  # a tar shard that cannot be read (on): the samples after the damage are lost
    "duplicate_key",  # a second sample with a key already built
)


class SkipReason(Exception):
    """Why an input was left out of a dataset: `code` is one of REASONS, `detail` says more."""

    def __init__(self, code: str, detail: str = ""):
        if code not in REASONS:
            raise ValueError(f"unknown skip reason {code!r}; known: {REASONS}")
        super().__init__(code, detail)
        self.code, self.detail = code, detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def read_file(path: str) -> bytes:
    """A file's bytes, or SkipReason missing_file / unreadable_file / empty_file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SkipReason("missing_file", path) from None
    except OSError as error:  # a directory, permissions, an I/O error
        raise SkipReason("unreadable_file", f"{path}: {error.strerror or error}") from None
    if not data:
        raise SkipReason("empty_file", path)
    return data


def _open_video(data: bytes):
    if not data:
        raise SkipReason("empty_file")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as error:
        raise SkipReason("corrupt_video", str(error)) from None
    if not container.streams.video:
        other = [stream.type for stream in container.streams]
        container.close()
        # A truncated file can lose its index and so every stream: that is damage, not audio.
        raise SkipReason("no_video_stream", f"streams: {other}") if other else SkipReason("corrupt_video", "no streams")
    return container


def probe_video(data: bytes) -> VideoInfo:
    """Decodes every frame of an encoded video (so a damaged one fails here, at build time, not in
    training) and returns its frame count, frame rate and size; SkipReason on failure."""
    container = _open_video(data)
    try:
        stream = container.streams.video[0]
        count, height, width = 0, 0, 0
        try:
            for frame in container.decode(stream):
                if count == 0:
                    height, width = frame.height, frame.width
                count += 1
        except av.FFmpegError as error:
            if count and (not stream.frames or count < stream.frames):
                raise SkipReason("truncated_video", f"decoding stopped after {count} of {stream.frames or '?'} frames: {error}") from None
            raise SkipReason("corrupt_video", f"after {count} frames: {error}") from None
        if count == 0:
            raise SkipReason("corrupt_video", "no frame decodes")
        if stream.frames and count < stream.frames:
            raise SkipReason("truncated_video", f"{count} of {stream.frames} declared frames decode")
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoInfo(count, float(rate), height, width)
    finally:
        container.close()


def decode_frames(data: bytes, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of an encoded video -> (len(indices), H, W, 3)
    uint8. Decodes from the start up to the largest index and converts only the frames asked for;
    SkipReason if the video no longer decodes that far."""
    indices = np.asarray(indices, np.int64)
    if indices.size == 0 or indices.min() < 0:
        raise ValueError(f"frame indices must be non-negative and not empty, got {indices}")
    wanted = set(indices.tolist())
    last = int(indices.max())
    frames: dict[int, np.ndarray] = {}
    container = _open_video(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    frames[position] = frame.to_ndarray(format="rgb24")
                if position >= last:
                    break
        except av.FFmpegError as error:
            raise SkipReason("corrupt_video", f"after {len(frames)} wanted frames: {error}") from None
    finally:
        container.close()
    if last not in frames:
        raise SkipReason("truncated_video", f"frame {last} asked for, but {len(frames) and max(frames) + 1} or fewer frames decode")
    return np.stack([frames[i] for i in indices.tolist()])


def encode_video(frames: np.ndarray, fps: float = 8.0, codec: str = "libx264", crf: int = 18, faststart: bool = False) -> bytes:
    """(T, H, W, 3) uint8 -> MP4 bytes (H.264, yuv420p, so H and W must be even). `faststart` puts
    the index before the frames, as web videos have it (FFmpeg then rewrites a seekable file)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "video.mp4")
        with av.open(path, mode="w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        with open(path, "rb") as f:
            return f.read()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG / PNG / WebP / ..., or the same as base64 text, which image tars
    sometimes hold) -> (H, W, 3) uint8 RGB; SkipReason corrupt_image on failure."""
    if not data:
        raise SkipReason("empty_file")
    try:
        return _pil_rgb(data)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        first_error = error
    try:
        return _pil_rgb(base64.b64decode(data, validate=True))
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        raise SkipReason("corrupt_image", str(first_error)) from None


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode everything now: truncated files fail here
        return np.asarray(image.convert("RGB"))
