"""`launch/evaluate.py` on a model trained for a few steps: the references bound the metrics."""

import json
import os
import pathlib
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from jax_i2v.config_utils import load_config
from jax_i2v.eval.synthetic_benchmark import BenchmarkClip, pipeline_generator, sample_clips
from launch import evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_then_evaluate(micro_run, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    workdir = micro_run
    evaluate = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "evaluate.py"),
            f"--checkpoint={workdir}",
            "--bench=synthetic",
            "--num_videos=4",
            "--batch_size=3",
            "--seed=3",
            "--sampling.steps=2",
            "--sampling.frameinit_ds=0.5",
            "--codec_reference",
            f"--out={tmp_path / 'scores.json'}",
            f"--gif={tmp_path / 'samples.gif'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    # No library warnings about how the run's params are read (nothing a user could act on).
    assert not [line for line in evaluate.stderr.splitlines() if line.startswith("WARNING:absl")], evaluate.stderr[-3000:]
    result = json.loads(evaluate.stdout.splitlines()[-1])
    assert set(result) == {"model", "ground_truth", "static", "ground_truth_coded", "settings"}
    assert result["settings"]["frameinit_ds"] == 0.5 and result["settings"]["frameinit_dt"] == 0.25
    truth, static, model = result["ground_truth"], result["static"], result["model"]
    assert truth["motion_error"] == 0.0 and truth["appearance_drift"] == 0.0 and truth["background_psnr"] == 100.0
    assert truth["direction_accuracy"] == 1.0
    assert truth["fvd_proxy"] < 1e-6 < static["fvd_proxy"]
    assert static["direction_accuracy"] == 0.0 and static["smoothness"] == 0.0 and static["motion_error"] > 0.0
    for key in ("appearance_drift", "background_psnr", "motion_error", "direction_accuracy", "smoothness", "fvd_proxy"):
        assert isinstance(model[key], float)
    per_video = json.loads((tmp_path / "scores.json").read_text())["per_video"]
    assert len(per_video) == 4 and all({"caption", "model", "ground_truth", "static"} <= set(v) for v in per_video)
    # 4 rows of (sample | ground truth), 16x16 frames magnified 4x with 2-pixel gaps.
    grid = iio.imread(tmp_path / "samples.gif")
    assert grid.shape == (4, 4 * 64 + 3 * 2, 2 * 64 + 2, 3)


def test_the_run_is_sampled_as_its_config_says_in_batches_with_per_video_seeds():
    config = load_config(str(ROOT / "configs" / "tiny.py"))
    sampling = evaluate.trained_sampling(config)
    assert sampling.noise_alpha == config.objective.noise_alpha and sampling.fresh_noise_alpha == config.sampling.fresh_noise_alpha
    assert sampling.frame_stride == evaluate.BENCHMARK_FRAME_STRIDE
    with pytest.raises(ValueError, match="first_frame_dropout"):
        evaluate.trained_sampling(config, image_guidance=1.5)
    config.objective.text_dropout = 0.0
    with pytest.raises(ValueError, match="text_dropout"):
        evaluate.trained_sampling(config)

    calls = []

    class RecordingPipeline:
        def __call__(self, images, prompts, **kwargs):
            calls.append((len(images), list(prompts), kwargs))
            return np.zeros((len(images), 2, 4, 4, 3), np.float32)

    generate = pipeline_generator(RecordingPipeline(), 2, 4, sampling)
    clips = [BenchmarkClip(np.zeros((2, 4, 4, 3), np.uint8), f"caption {i}", np.zeros((2, 0, 4, 4), bool), np.zeros(0)) for i in range(5)]
    videos, _ = sample_clips(generate, clips, seed=10, batch_size=3)
    assert len(videos) == 5 and [n for n, _, _ in calls] == [3, 2]  # one call per batch
    assert [kwargs["seed"] for _, _, kwargs in calls] == [10, 13] and calls[1][1] == ["caption 3", "caption 4"]
    assert all(kwargs["sampling"] is sampling for _, _, kwargs in calls)


@pytest.mark.slow
def test_ode_reference_distance_is_zero_for_the_same_sampler_and_grows_with_fewer_steps(micro_run, tmp_path):
    """The reference videos start from the benchmark's noise: the model's own DDIM (eta 0) videos
    are at distance 0, and fewer steps land elsewhere."""
    common = [
        f"--checkpoint={micro_run}",
        "--num_videos=2",
        "--seed=2",
        "--sampling.eta=0",
        f"--ode_reference={micro_run}",
        "--ode_reference_steps=3",
        f"--out={tmp_path / 'scores.json'}",
    ]
    same = evaluate.main(common + ["--sampling.steps=3"])
    assert same["model"]["reference_distance"] == 0.0
    assert [v["model"]["reference_distance"] for v in same["per_video"]] == [0.0] * 2
    fewer = evaluate.main(common + ["--sampling.steps=1"])
    assert fewer["model"]["reference_distance"] > 0.01
    assert fewer["settings"]["ode_reference"] == os.path.abspath(micro_run) and fewer["settings"]["ode_reference_steps"] == 3
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint=x", "--ode_reference=y", "--references_only"])
