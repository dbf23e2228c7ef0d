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
            "--checkpoint",
            str(workdir),
            "--bench",
            "synthetic",
            "--num-videos",
            "4",
            "--seed",
            "3",
            "--steps",
            "2",
            "--frameinit-ds",
            "0.5",
            "--codec-reference",
            "--out",
            str(tmp_path / "scores.json"),
            "--gif",
            str(tmp_path / "samples.gif"),
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


def test_sampling_noise_is_correlated_across_frames_as_the_training_noise_was():
    config = load_config(str(ROOT / "configs" / "tiny.py"))
    args = evaluate.parse_args(["--checkpoint", "unused"])
    assert evaluate.sampling_settings(config, args)["noise_alpha"] == config.objective.noise_alpha == 1.0
    config.objective.noise_alpha = 0.0
    assert evaluate.sampling_settings(config, args)["noise_alpha"] == 0.0
    settings = evaluate.sampling_settings(config, evaluate.parse_args(["--checkpoint", "unused", "--noise-alpha", "0.5"]))
    assert settings["noise_alpha"] == 0.5
    # tiny samples eta's noise independently per frame (its README measurement); else the noise alpha.
    assert settings["fresh_noise_alpha"] == config.sampling.fresh_noise_alpha == 0.0
    del config.sampling["fresh_noise_alpha"]
    assert (
        evaluate.sampling_settings(config, evaluate.parse_args(["--checkpoint", "unused", "--noise-alpha", "0.5"]))["fresh_noise_alpha"]
        == 0.5
    )
    settings = evaluate.sampling_settings(
        config, evaluate.parse_args(["--checkpoint", "unused", "--noise-alpha", "0.5", "--fresh-noise-alpha", "2"])
    )
    assert settings["fresh_noise_alpha"] == 2.0

    calls = []

    class RecordingPipeline:
        def sample_each(self, images, prompts, **kwargs):
            calls.append(kwargs)
            return np.zeros((len(images), 2, 4, 4, 3), np.float32)

    with pytest.raises(ValueError, match="first_frame_dropout"):
        evaluate.sampling_settings(config, evaluate.parse_args(["--checkpoint", "unused", "--image-guidance", "1.5"]))
    config.objective.text_dropout = 0.0
    with pytest.raises(ValueError, match="text_dropout"):
        evaluate.sampling_settings(config, evaluate.parse_args(["--checkpoint", "unused"]))

    evaluate.pipeline_generator(RecordingPipeline(), 2, 4, settings)(np.zeros((1, 4, 4, 3), np.uint8), ["a caption"], 0)
    assert calls[0]["noise_alpha"] == 0.5 and calls[0]["fresh_noise_alpha"] == 2.0


@pytest.mark.slow
def test_ode_reference_distance_is_zero_for_the_same_sampler_and_grows_with_fewer_steps(micro_run, tmp_path):
    """The reference videos start from the benchmark's noise: the model's own DDIM (eta 0) videos
    are at distance 0, and fewer steps land elsewhere."""
    common = [
        "--checkpoint",
        str(micro_run),
        "--num-videos",
        "2",
        "--seed",
        "2",
        "--eta",
        "0",
        "--ode-reference",
        str(micro_run),
        "--ode-reference-steps",
        "3",
        "--out",
        str(tmp_path / "scores.json"),
    ]
    same = evaluate.main(common + ["--steps", "3"])
    assert same["model"]["reference_distance"] == 0.0
    assert [v["model"]["reference_distance"] for v in same["per_video"]] == [0.0] * 2
    fewer = evaluate.main(common + ["--steps", "1"])
    assert fewer["model"]["reference_distance"] > 0.01
    assert fewer["settings"]["ode_reference"] == os.path.abspath(micro_run) and fewer["settings"]["ode_reference_steps"] == 3
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--checkpoint", "x", "--ode-reference", "y", "--no-model"])
