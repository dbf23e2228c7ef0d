"""launch/train.py on a JSONL-built video dataset and on a latent cache written by
launch/cache_latents.py; the cache holds exactly the codec's latents of the clips training samples."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from media_inputs import write_video_inputs

from jax_i2v.config_utils import latent_codec, load_config
from jax_i2v.data.latent_cache import LatentCacheSource
from jax_i2v.data.media_tfds import build_media_dataset, load_media_dataset
from jax_i2v.data.video_pipeline import clip_config, make_clip
from jax_i2v.models.text_encoder import WordTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.py"
CLIPS_PER_VIDEO = 2


def _run(script, *args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / script), f"--config={MICRO}", *args], env=env, capture_output=True, text=True, timeout=900
    )


def _train(workdir, source, data_dir, *overrides):
    return _run(
        "train.py",
        f"--workdir={workdir}",
        f"--config.data.source={source}",
        f"--config.data.dir={data_dir}",
        "--config.train.steps=3",
        "--config.tensorboard=False",
        *overrides,
    )


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_data")
    inputs = write_video_inputs(root)
    builder = build_media_dataset(
        root / "data", "clips", "jsonl", jsonl=inputs["jsonl"], video_folder=inputs["video_folder"], min_frames=12
    )
    return builder.data_dir


@pytest.fixture(scope="module")
def latent_cache(video_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "latents"
    result = _run(
        "cache_latents.py",
        f"--out={out}",
        "--config.data.source=videos",
        f"--config.data.dir={video_dataset}",
        f"--clips_per_video={CLIPS_PER_VIDEO}",
        "--dtype=float32",
        "--batch_size=3",
        "--seed=5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["count"] == 4 * CLIPS_PER_VIDEO
    return out


@pytest.mark.slow
def test_training_reads_a_jsonl_built_video_dataset(video_dataset, tmp_path):
    result = _train(tmp_path / "run", "videos", video_dataset, "--config.train.sample_every=3", "--config.train.sample_videos=2")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.gif")) == ["step_000003_0.gif", "step_000003_1.gif"]


def test_the_cache_holds_the_codec_latents_of_the_sampled_clips(video_dataset, latent_cache):
    config = load_config(str(MICRO))
    config.data.source, config.data.dir = "videos", str(video_dataset)
    cache = LatentCacheSource(str(latent_cache))
    videos = load_media_dataset(str(video_dataset))
    codec = latent_codec(config)
    tokenizer = WordTokenizer(config.text_encoder.vocab_size, config.data.text_len)
    assert len(cache) == len(videos) * CLIPS_PER_VIDEO
    for video in range(len(videos)):
        for draw in range(CLIPS_PER_VIDEO):
            record = cache[video * CLIPS_PER_VIDEO + draw]
            clip = make_clip(videos[video], clip_config(config.data), np.random.default_rng([5, video, draw]))
            np.testing.assert_allclose(record["latents"], codec.encode(clip["video"]), atol=1e-5)
            np.testing.assert_array_equal(record["first_frame_latent"], record["latents"][:1])
            np.testing.assert_array_equal(record["tokens"], tokenizer([clip["caption"]])[0])
            assert record["frame_stride"] == clip["frame_stride"] and record["caption"] == clip["caption"]


@pytest.mark.slow
def test_training_reads_cached_latents_and_refuses_a_cache_of_other_settings(latent_cache, tmp_path):
    result = _train(tmp_path / "run", "latents", latent_cache, "--config.train.sample_every=3", "--config.train.sample_videos=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (tmp_path / "run" / "samples" / "step_000003_0.gif").is_file()
    other = _train(tmp_path / "other", "latents", latent_cache, "--config.data.stride_range=(1, 3)")
    assert other.returncode == 2 and "does not fit this config" in other.stderr and "clips" in other.stderr
    again = _run("cache_latents.py", f"--out={latent_cache}", "--config.data.source=videos", f"--config.data.dir={latent_cache}")
    assert again.returncode == 2 and "already holds a latent cache" in again.stderr


def test_an_unknown_data_source_is_named():
    from jax_i2v.train.inputs import training_inputs

    config = load_config(str(MICRO))
    config.data.source = "webvid"
    with pytest.raises(ValueError, match="data.source must be one of"):
        training_inputs(config, 4, 0, text=None, codec=None)


@pytest.mark.slow
def test_benchmark_data_reports_throughput_of_a_built_dataset(video_dataset):
    result = _run(
        "benchmark_data.py",
        "--config.data.source=videos",
        f"--config.data.dir={video_dataset}",
        "--batches=3",
        "--warmup=1",
        "--config.data.read_threads=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["clips"] == 3 * 4 and report["clips_per_sec"] > 0 and report["source"] == "videos"
    # micro clips: 4 frames of 16 x 16 x 3 float32 per clip
    assert report["delivered_mb_per_sec"] == pytest.approx(report["clips_per_sec"] * 4 * 16 * 16 * 3 * 4 / 1e6)
    assert report["encoded_mb_per_sec"] > 0
