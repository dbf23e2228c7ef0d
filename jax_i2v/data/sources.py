"""The raw inputs of dataset builds, and their checked preparation over worker processes.

Three layouts are read:
- ConsistI2V's: a JSONL file, one {"text", "time", "file", "fps"} object per line, `file` relative
  to a video folder (`jsonl_items`);
- MCM's webdataset shards: .tar files of `KEY.mp4` + `KEY.json` ({"caption": ...}) (`tar_samples`);
- image-text sets: folders or .tar shards of `KEY.jpg|png|webp` + `KEY.txt|caption` (`image_items`).

Each yields `RawItem`s (or `Skipped` for an input that is bad before any decoding: a bad JSONL
line, a sample without caption). `prepare_video` / `prepare_image` turn one item into a dataset
example by decoding all of it (a damaged file fails at build time, not mid-training), or into a
`Skipped` with its reason. `ordered_map` runs them over worker processes in input order with a
bounded number of items in flight. No TFDS or JAX here, so worker processes start quickly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import tarfile
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from jax_i2v.data.decode import SkipReason, decode_image, probe_video, read_file

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
# LAION captions carry CLIP's special tokens in some dumps (MCM strips them).
_CAPTION_MARKERS = ("<start_of_text>", "<end_of_text>")


@dataclasses.dataclass(frozen=True)
class RawItem:
    """One input: `key` (unique in the dataset), `source` (where it is, for people), a caption, and
    the media as a file `path` or as `data` bytes (a tar member)."""

    key: str
    source: str
    caption: str
    path: Optional[str] = None
    data: Optional[bytes] = None


@dataclasses.dataclass(frozen=True)
class Skipped:
    source: str
    code: str
    detail: str = ""

    def as_dict(self) -> dict:
        return {"source": self.source, "reason": self.code, "detail": self.detail}


Item = Union[RawItem, Skipped]


def clean_caption(caption) -> str:
    if not isinstance(caption, str):
        return ""
    for marker in _CAPTION_MARKERS:
        caption = caption.replace(marker, "")
    return " ".join(caption.split())


def jsonl_items(jsonl_path: str, video_folder: str) -> Iterator[Item]:
    """ConsistI2V's layout. A line that is not a JSON object with a string "file" is
    `bad_jsonl_line`; one without a caption ("text") is `missing_caption`."""
    with open(jsonl_path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            where = f"{jsonl_path}:{number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield Skipped(where, "bad_jsonl_line", str(error))
                continue
            if not isinstance(record, dict) or not isinstance(record.get("file"), str) or not record["file"]:
                yield Skipped(where, "bad_jsonl_line", 'not an object with a "file" string')
                continue
            path = os.path.join(video_folder, record["file"])
            caption = clean_caption(record.get("text"))
            if not caption:
                yield Skipped(path, "missing_caption", f"{where} has no text")
                continue
            yield RawItem(record["file"], path, caption, path=path)


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name, the
    extension the rest ("a/b/0001.mp4" -> ("a/b/0001", "mp4"))."""
    directory, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower()


def tar_samples(shard: str) -> Iterator[Union[tuple[str, dict[str, bytes]], Skipped]]:
    """(key, {extension: bytes}) per sample of a tar shard, members of one sample being adjacent
    as webdataset writes them. A shard that cannot be read on yields `corrupt_shard`; the samples
    before the damage are kept."""
    key, members = None, {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, extension = _split_name(member.name)
                if member_key != key and key is not None:
                    yield key, members
                    members = {}
                key = member_key
                members[extension] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        yield Skipped(shard, "corrupt_shard", f"after sample {key!r}: {error}" if key else str(error))
        return  # a partly read last sample is not kept
    if key is not None:
        yield key, members


def _caption_of(members: dict[str, bytes]) -> str:
    """From a .json {"caption"} (MCM's WebVid shards) or a .txt / .caption / .text member."""
    if "json" in members:
        try:
            record = json.loads(members["json"].decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            caption = clean_caption(record.get("caption", record.get("text")))
            if caption:
                return caption
    for extension in CAPTION_EXTENSIONS:
        if extension in members:
            return clean_caption(members[extension].decode("utf-8", errors="replace"))
    return ""


def _sample_item(shard: str, key: str, members: dict[str, bytes], extensions: Sequence[str]) -> Item:
    source = f"{shard}:{key}"
    media = next((e for e in extensions if e in members), None)
    if media is None:
        return Skipped(source, "missing_media", f"members {sorted(members)}; expected one of {list(extensions)}")
    caption = _caption_of(members)
    if not caption:
        return Skipped(source, "missing_caption")
    return RawItem(f"{os.path.basename(shard)}/{key}", source, caption, data=members[media])


def shard_items(shards: Sequence[str], extensions: Sequence[str]) -> Iterator[Item]:
    """Items of tar shards whose media member has one of `extensions`."""
    for shard in shards:
        for sample in tar_samples(shard):
            yield sample if isinstance(sample, Skipped) else _sample_item(shard, *sample, extensions)


def list_shards(paths: Sequence[str]) -> list[str]:
    """Tar files given directly or found (recursively, sorted) in given folders."""
    shards = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names if name.endswith(".tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {path}")
            shards += found
        elif os.path.isfile(path):
            shards.append(path)
        else:
            raise FileNotFoundError(f"no shard or folder at {path}")
    return shards


def image_items(paths: Sequence[str]) -> Iterator[Item]:
    """Image-text pairs from folders (KEY.jpg beside KEY.txt, recursively) and .tar shards."""
    for path in paths:
        if os.path.isfile(path):
            yield from shard_items([path], IMAGE_EXTENSIONS)
            continue
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no image folder or shard at {path}")
        for root, dirs, names in os.walk(path):
            dirs.sort()
            shards = sorted(n for n in names if n.endswith(".tar"))
            yield from shard_items([os.path.join(root, n) for n in shards], IMAGE_EXTENSIONS)
            groups: dict[str, dict[str, str]] = collections.defaultdict(dict)
            for name in names:
                stem, extension = _split_name(name)
                groups[stem][extension] = os.path.join(root, name)
            for stem in sorted(groups):
                files = groups[stem]
                key = os.path.relpath(os.path.join(root, stem), path)
                image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
                if image is None:
                    if any(e in files for e in CAPTION_EXTENSIONS):
                        yield Skipped(os.path.join(root, stem), "missing_media", f"a caption but no {'/'.join(IMAGE_EXTENSIONS)} file")
                    continue
                caption_file = next((files[e] for e in CAPTION_EXTENSIONS if e in files), None)
                caption = clean_caption(_read_text(caption_file)) if caption_file else ""
                if not caption:
                    yield Skipped(image, "missing_caption", "no non-empty .txt / .caption / .text beside it")
                    continue
                yield RawItem(key, image, caption, path=image)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _media_bytes(item: RawItem) -> bytes:
    return item.data if item.data is not None else read_file(item.path)


def prepare_video(item: Item, min_frames: int = 2) -> Union[dict, Skipped]:
    """A video item -> its example {"key", "video" (the encoded bytes), "caption", "num_frames",
    "fps", "height", "width", "source"}, or the reason it is skipped."""
    if isinstance(item, Skipped):
        return item
    try:
        data = _media_bytes(item)
        info = probe_video(data)
        if info.num_frames < min_frames:
            raise SkipReason("too_short", f"{info.num_frames} frames, fewer than min_frames={min_frames}")
    except SkipReason as reason:
        return Skipped(item.source, reason.code, reason.detail)
    return dict(
        key=item.key,
        video=data,
        caption=item.caption,
        num_frames=info.num_frames,
        fps=info.fps,
        height=info.height,
        width=info.width,
        source=item.source,
    )


def prepare_image(item: Item) -> Union[dict, Skipped]:
    """An image item -> {"key", "image" (the encoded bytes), "caption", "height", "width", "source"}."""
    if isinstance(item, Skipped):
        return item
    try:
        data = _media_bytes(item)
        height, width, _ = decode_image(data).shape
    except SkipReason as reason:
        return Skipped(item.source, reason.code, reason.detail)
    return dict(key=item.key, image=data, caption=item.caption, height=height, width=width, source=item.source)


def ordered_map(fn: Callable, items: Iterable, num_workers: int, max_pending: int = 0) -> Iterator:
    """fn over items, in order; in `num_workers` spawned processes (0: in this one), with at most
    `max_pending` items (default 4 per worker) read ahead, so memory stays bounded for large shards."""
    if num_workers <= 0:
        yield from map(fn, items)
        return
    max_pending = max_pending or 4 * num_workers
    # Spawned, not forked: the caller may hold JAX's or Grain's threads, which fork does not copy safely.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
