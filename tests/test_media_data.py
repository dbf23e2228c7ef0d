"""Video-text and image-text TFDS builders on real files: exactly the good inputs, right frames,
captions and strides; every bad input in the manifest with its reason; interrupted builds."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from media_inputs import FRAMES, MIN_FRAMES, RESOLUTION, write_image_inputs, write_video_inputs

from jax_i2v import media
from jax_i2v.data import sources
from jax_i2v.data.decode import SkipReason, decode_frames, decode_image
from jax_i2v.data.media_tfds import build_media_dataset, load_media_dataset, read_manifest
from jax_i2v.data.video_pipeline import UNREADABLE_KEY, ClipConfig, image_dataset, make_clip, mcm_clips, training_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
# H.264 at crf 18 in yuv420p on 32x32 frames with sharp edges: small mean error, larger at edges.
MEAN_CODEC_ERROR = 6.0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("media_inputs")
    return {**write_video_inputs(root), "images": write_image_inputs(root), "root": root}


@pytest.fixture(scope="module")
def jsonl_build(inputs, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("jsonl_data")
    builder = build_media_dataset(
        data_dir, "clips", "jsonl", jsonl=inputs["jsonl"], video_folder=inputs["video_folder"], min_frames=MIN_FRAMES, num_workers=2
    )
    return builder.data_dir


@pytest.fixture(scope="module")
def shard_build(inputs, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("shard_data")
    return build_media_dataset(data_dir, "shards", "webdataset", paths=inputs["shards"], min_frames=MIN_FRAMES).data_dir


def _by_source(source):
    return {example["source"].decode(): example for example in (source[i] for i in range(len(source)))}


def _mean_error(decoded, frames):
    return np.abs(decoded.astype(float) - frames.astype(float)).mean()


def _assert_right_frames(decoded, frames):
    """Close to the source frames, and each frame closer to its own source frame than to any other."""
    assert decoded.shape == frames.shape
    assert _mean_error(decoded, frames) < MEAN_CODEC_ERROR
    distances = np.abs(decoded[:, None].astype(float) - frames[None].astype(float)).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(distances.argmin(axis=1), np.arange(len(frames)))


def _assert_manifest(dataset_dir, kept, bad):
    manifest = read_manifest(dataset_dir)
    assert manifest["kept"] == kept
    assert {skip["source"]: skip["reason"] for skip in manifest["skipped_inputs"]} == bad
    assert manifest["skipped"] == len(bad) == sum(manifest["skipped_by_reason"].values())


def test_jsonl_build_keeps_exactly_the_good_videos_with_their_frames_and_captions(inputs, jsonl_build):
    source = load_media_dataset(jsonl_build)
    examples = _by_source(source)
    good = {os.path.join(inputs["video_folder"], name): value for name, value in inputs["good_jsonl"].items()}
    assert sorted(examples) == sorted(good)
    for path, (caption, frames) in good.items():
        example = examples[path]
        assert example["caption"].decode() == caption
        assert (int(example["num_frames"]), float(example["fps"]), int(example["height"]), int(example["width"])) == (
            FRAMES,
            8.0,
            RESOLUTION,
            RESOLUTION,
        )
        _assert_right_frames(decode_frames(example["video"], np.arange(FRAMES)), frames)
    _assert_manifest(jsonl_build, len(good), inputs["bad_jsonl"])


def test_webdataset_build_skips_the_corrupt_member_and_keeps_the_rest(inputs, shard_build):
    examples = _by_source(load_media_dataset(shard_build))
    shards = inputs["shards"][0]
    good = {f"{shards}/{key.split('/')[0]}:{key.split('/')[1]}": value for key, value in inputs["good_shards"].items()}
    assert sorted(examples) == sorted(good)
    for where, (caption, frames) in good.items():
        assert examples[where]["caption"].decode() == caption
        _assert_right_frames(decode_frames(examples[where]["video"], np.arange(FRAMES)), frames)
    _assert_manifest(shard_build, len(good), inputs["bad_shards"])


def test_a_damaged_shard_keeps_the_samples_before_the_damage(inputs, tmp_path):
    shard = pathlib.Path(inputs["shards"][0]) / "00001.tar"
    damaged = tmp_path / "damaged.tar"
    data = shard.read_bytes()
    damaged.write_bytes(data[: len(data) * 2 // 3])
    builder = build_media_dataset(tmp_path / "data", "damaged", "webdataset", paths=[str(damaged)], min_frames=MIN_FRAMES)
    kept = len(load_media_dataset(builder.data_dir))
    manifest = read_manifest(builder.data_dir)
    assert 1 <= kept < 3 and manifest["kept"] == kept
    assert [skip["reason"] for skip in manifest["skipped_inputs"]] == ["corrupt_shard"]


def test_image_build_decodes_folders_and_shards_and_cleans_captions(inputs, tmp_path):
    images = inputs["images"]
    builder = build_media_dataset(tmp_path, "images", "images", paths=images["paths"])
    source = load_media_dataset(builder.data_dir)
    by_caption = {source[i]["caption"].decode(): source[i] for i in range(len(source))}
    assert sorted(by_caption) == sorted(caption for caption, _ in images["good"].values())
    for caption, image in images["good"].values():
        example = by_caption[caption]
        np.testing.assert_array_equal(decode_image(example["image"]), image)  # PNG and lossless WebP
        assert (int(example["height"]), int(example["width"])) == image.shape[:2]
    _assert_manifest(builder.data_dir, len(images["good"]), images["bad"])
    batch = next(iter(image_dataset(source, 12, 4, seed=0)))
    assert batch["image"].shape == (4, 12, 12, 3) and len(batch["caption"]) == 4
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1


def test_clips_of_a_built_dataset_hold_the_sampled_frames_and_stride(inputs, jsonl_build):
    source = load_media_dataset(jsonl_build)
    frames_of = {os.path.join(inputs["video_folder"], name): frames for name, (_, frames) in inputs["good_jsonl"].items()}
    config = ClipConfig(num_frames=5, resolution=RESOLUTION, stride_range=(1, 5))  # spans up to 21 of 24 frames
    strides = set()
    for seed in range(12):
        example = source[seed % len(source)]
        clip = make_clip(example, config, np.random.default_rng(seed))
        stride, indices = int(clip["frame_stride"]), clip["frame_indices"]
        strides.add(stride)
        assert 1 <= stride <= 5 and (np.diff(indices) == stride).all()  # 24 frames: never shortened
        expected = frames_of[example["source"].decode()][indices]
        expected = expected[:, :, ::-1] if clip["flipped"] else expected
        decoded = np.round((clip["video"] + 1.0) * 127.5)
        assert _mean_error(decoded, expected) < MEAN_CODEC_ERROR
    assert len(strides) >= 3


def test_mcm_clips_span_their_fixed_stride_or_fail_on_short_videos(jsonl_build):
    source = load_media_dataset(jsonl_build)
    config = mcm_clips(resolution=16, num_frames=4)
    assert config.stride_range == (8, 8) and not config.random_flip and config.min_video_frames == 25
    with pytest.raises(ValueError, match="24 frames, fewer than the 25 that 4 frames at stride 8 span .*min_frames=25"):
        make_clip(source[0], config, np.random.default_rng(0))
    fits = ClipConfig(num_frames=4, resolution=16, stride_range=(7, 7), random_flip=False, crop="random_resized", shorten=False)
    clip = make_clip(source[0], fits, np.random.default_rng(0))
    assert clip["video"].shape == (4, 16, 16, 3) and (np.diff(clip["frame_indices"]) == 7).all()


def test_random_resized_crop_boxes_follow_torchvision():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = media.random_resized_crop_box(60, 100, (0.5, 1.0), rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 100
        assert 0.45 <= h * w / 6000 <= 1.0 and 0.7 <= w / h <= 1.4
    assert media.random_resized_crop_box(10, 100, (1.0, 1.0), rng) == (0, 43, 10, 13)  # fallback: centre, ratio clamped


def test_built_video_datasets_stream_through_grain(jsonl_build):
    source = load_media_dataset(jsonl_build)
    config = ClipConfig(num_frames=4, resolution=16, stride_range=(1, 5))
    batches = iter(training_dataset(source, config, 3, seed=0, read_threads=2))
    for _ in range(3):  # 9 clips of 4 videos: past an epoch
        batch = next(batches)
        assert batch["video"].shape == (3, 4, 16, 16, 3) and len(batch["caption"]) == 3


def test_a_video_that_no_longer_decodes_is_replaced_and_counted(jsonl_build):
    source = load_media_dataset(jsonl_build)
    examples = [dict(source[i]) for i in range(len(source))]
    examples[1]["video"] = examples[1]["video"][: len(examples[1]["video"]) // 3]  # changed after the build
    config = ClipConfig(num_frames=4, resolution=16, stride_range=(1, 5))

    def unreadable_counts():
        batches = iter(training_dataset(examples, config, 3, seed=0, read_threads=2))
        counts = []
        for _ in range(3):  # 9 clips: the damaged video's turn comes twice
            batch = next(batches)
            assert batch["video"].shape == (3, 4, 16, 16, 3) and np.isfinite(batch["video"]).all()
            counts.append(int(batch[UNREADABLE_KEY].sum()))
        return counts

    counts = unreadable_counts()
    assert sum(counts) >= 2
    assert unreadable_counts() == counts  # the replacements are drawn from each clip's own rng


def test_a_rebuild_reuses_the_dataset_and_other_inputs_under_the_same_name_fail(inputs, jsonl_build):
    data_dir = pathlib.Path(jsonl_build).parents[2]
    again = build_media_dataset(
        data_dir, "clips", "jsonl", jsonl=inputs["jsonl"], video_folder=inputs["video_folder"], min_frames=MIN_FRAMES
    )
    assert again.data_dir == jsonl_build
    with pytest.raises(ValueError, match="was built from"):
        build_media_dataset(data_dir, "clips", "jsonl", jsonl=inputs["jsonl"], video_folder=inputs["video_folder"], min_frames=2)
    with pytest.raises(FileNotFoundError, match="JSONL file not found"):
        build_media_dataset(data_dir, "other", "jsonl", jsonl=str(data_dir / "none.jsonl"), video_folder=inputs["video_folder"])
    with pytest.raises(FileNotFoundError, match="no shard or folder at"):
        build_media_dataset(data_dir, "other", "webdataset", paths=[str(data_dir / "no_shards")])
    with pytest.raises(FileNotFoundError, match="no image folder or shard"):
        build_media_dataset(data_dir, "other", "images", paths=[str(data_dir / "no_images")])
    with pytest.raises(ValueError, match="layout must be one of"):
        build_media_dataset(data_dir, "other", "csv", paths=["x"])
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        load_media_dataset(str(data_dir / "nothing"))


def test_skip_reasons_survive_worker_processes():
    item = sources.RawItem("k", "/nowhere/x.mp4", "caption", path="/nowhere/x.mp4")
    results = list(sources.ordered_map(sources.prepare_video, [item, sources.Skipped("line 3", "bad_jsonl_line")], num_workers=1))
    assert results == [sources.Skipped("/nowhere/x.mp4", "missing_file", "/nowhere/x.mp4"), sources.Skipped("line 3", "bad_jsonl_line")]
    with pytest.raises(ValueError, match="unknown skip reason"):
        SkipReason("bad_luck")


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_prepared_and_the_rerun_builds_it(inputs, tmp_path):
    # Many lines (repeats of the good files, skipped as duplicates) so the build is still running when killed.
    lines = [json.dumps({"text": f"clip {i}", "file": f"clip_{i % 4}.mp4"}) for i in range(400)]
    jsonl = tmp_path / "long.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    data_dir = tmp_path / "data"
    args = dict(jsonl=str(jsonl), video_folder=inputs["video_folder"], min_frames=MIN_FRAMES)
    script = (
        "import sys; from jax_i2v.data.media_tfds import build_media_dataset; "
        f"build_media_dataset({str(data_dir)!r}, 'long', 'jsonl', **{args!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = data_dir / "video_text" / "long"
    deadline = time.time() + 120
    while time.time() < deadline and not (parent.is_dir() and any(p.name.startswith("incomplete.") for p in parent.iterdir())):
        assert process.poll() is None, "the build ended before it could be killed"
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (parent / "1.0.0").exists()
    assert any(p.name.startswith("incomplete.") for p in parent.iterdir())
    builder = build_media_dataset(data_dir, "long", "jsonl", **args)
    assert len(load_media_dataset(builder.data_dir)) == 4
    assert read_manifest(builder.data_dir)["skipped_by_reason"] == {"duplicate_key": 396}
    assert sorted(p.name for p in parent.iterdir()) == ["1.0.0"]
