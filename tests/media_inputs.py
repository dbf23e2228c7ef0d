"""Real input files for the dataset builders: MP4s encoded with PyAV from moving-shapes frames,
a JSONL with bad lines, webdataset tar shards, an image-text folder; each bad input named with the
reason the build must give for it."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image

from jax_i2v.data.decode import encode_video
from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example

FRAMES, RESOLUTION, MIN_FRAMES = 24, 32, 12


def video(index: int, frames: int = FRAMES) -> np.ndarray:
    """Moving shapes with a white bar at column t in frame t, so that no two frames look alike."""
    config = MovingShapesConfig(num_frames=frames, resolution=RESOLUTION, min_speed=0.05, max_speed=0.08)
    clip = generate_example(7, index, config)["video"].copy()
    for t in range(frames):
        clip[t, :, t % RESOLUTION] = 255
    return clip


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_video_inputs(root: pathlib.Path) -> dict:
    """Returns {"jsonl", "video_folder", "shards", "good_jsonl": {file: (caption, frames)},
    "good_shards": {key: (caption, frames)}, "bad_jsonl": {source: reason}, "bad_shards": {...}}."""
    folder = root / "videos"
    folder.mkdir(parents=True)
    good_jsonl, bad_jsonl = {}, {}
    lines = []
    for i in range(4):
        name = f"clip_{i}.mp4"
        frames = video(i)
        (folder / name).write_bytes(encode_video(frames, fps=8, faststart=i % 2 == 0))
        caption = f"video number {i} moves left"
        good_jsonl[name] = (caption, frames)
        lines.append(json.dumps({"text": caption, "time": "00:00:03", "file": name, "fps": 8}))
    mp4 = encode_video(video(9), faststart=True)
    bad_files = {
        "corrupt.mp4": (os.urandom(3000), "corrupt_video"),
        "truncated.mp4": (mp4[: int(len(mp4) * 0.9)], "truncated_video"),
        "empty.mp4": (b"", "empty_file"),
        "short.mp4": (encode_video(video(10, frames=MIN_FRAMES - 4)), "too_short"),
    }
    for name, (data, reason) in bad_files.items():
        (folder / name).write_bytes(data)
        lines.append(json.dumps({"text": f"bad {name}", "file": name}))
        bad_jsonl[str(folder / name)] = reason
    (folder / "a_folder.mp4").mkdir()  # a path that cannot be read as a file
    lines.append(json.dumps({"text": "a folder", "file": "a_folder.mp4"}))
    bad_jsonl[str(folder / "a_folder.mp4")] = "unreadable_file"
    lines.append(json.dumps({"text": "nowhere", "file": "missing.mp4"}))
    bad_jsonl[str(folder / "missing.mp4")] = "missing_file"
    lines.append(json.dumps({"file": "clip_0.mp4"}))  # no caption
    bad_jsonl[str(folder / "clip_0.mp4")] = "missing_caption"
    lines.insert(2, '{"text": "a line cut short", "file": ')
    jsonl = root / "train.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    bad_jsonl[f"{jsonl}:3"] = "bad_jsonl_line"

    shards_dir = root / "shards"
    shards_dir.mkdir()
    good_shards, bad_shards = {}, {}
    for s in range(2):
        shard = shards_dir / f"{s:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i in range(3):
                key = f"{s:05d}{i:04d}"
                frames = video(20 + 3 * s + i)
                caption = f"shard {s} sample {i}"
                _add(tar, f"{key}.mp4", encode_video(frames))
                _add(tar, f"{key}.json", json.dumps({"caption": caption}).encode())
                good_shards[f"{shard.name}/{key}"] = (caption, frames)
            if s == 0:
                _add(tar, "bad_member.mp4", os.urandom(2000))
                _add(tar, "bad_member.json", json.dumps({"caption": "garbage"}).encode())
                bad_shards[f"{shard}:bad_member"] = "corrupt_video"
                _add(tar, "uncaptioned.mp4", encode_video(video(40)))
                _add(tar, "uncaptioned.json", json.dumps({"url": "no caption here"}).encode())
                bad_shards[f"{shard}:uncaptioned"] = "missing_caption"
    return dict(
        jsonl=str(jsonl),
        video_folder=str(folder),
        shards=[str(shards_dir)],
        good_jsonl=good_jsonl,
        good_shards=good_shards,
        bad_jsonl=bad_jsonl,
        bad_shards=bad_shards,
    )


def _image_bytes(array: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **({"lossless": True} if format == "WEBP" else {}))
    return buffer.getvalue()


def write_image_inputs(root: pathlib.Path) -> dict:
    """A folder of png / webp / jpg + .txt / .caption files and a tar shard (one image base64
    encoded, as some LAION dumps hold them). Returns {"paths", "good": {key: (caption, image)}, "bad": {...}}."""
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    good, bad = {}, {}
    for i, (format, suffix, caption_suffix) in enumerate([("PNG", "png", "txt"), ("WEBP", "webp", "caption"), ("PNG", "png", "txt")]):
        image = rng.integers(0, 256, (20 + 4 * i, 28, 3), dtype=np.uint8)
        key = f"sub/img{i}" if i == 2 else f"img{i}"
        (folder / f"{key}.{suffix}").write_bytes(_image_bytes(image, format))
        (folder / f"{key}.{caption_suffix}").write_text(f"<start_of_text>image {i} of noise<end_of_text>\n")
        good[key] = (f"image {i} of noise", image)
    (folder / "nocaption.png").write_bytes(_image_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "PNG"))
    bad[str(folder / "nocaption.png")] = "missing_caption"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "broken.txt").write_text("a broken image")
    bad[str(folder / "broken.jpg")] = "corrupt_image"
    shard = root / "images.tar"
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with tarfile.open(shard, "w") as tar:
        _add(tar, "b64.jpg", base64.b64encode(_image_bytes(image, "PNG")))
        _add(tar, "b64.txt", b"a base64 image")
    good["images.tar/b64"] = ("a base64 image", image)
    return dict(paths=[str(folder), str(shard)], good=good, bad=bad)
