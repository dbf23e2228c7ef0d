"""The command-line entry points run end to end."""

import json
import pathlib

import numpy as np
import pytest

from launch import benchmark


@pytest.mark.slow
def test_benchmark_prints_one_json_line(reference_dir, reference_unet, capsys):
    _, params = reference_unet
    benchmark.main(
        [
            "--unet-config",
            str(reference_dir / "unet" / "config.json"),
            "--batch",
            "1",
            "--frames",
            "3",
            "--latent-hw",
            "8",
            "8",
            "--text-len",
            "4",
            "--warmup",
            "1",
            "--iters",
            "2",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["params"] == sum(x.size for x in __import__("jax").tree_util.tree_leaves(params))
    for key in ("compile_s", "fwd_ms", "fwdbwd_ms", "model_tflops_per_s"):
        assert result[key] > 0
    # A CPU has no bf16 peak to measure MFU against; "auto" picks the CPU kernel.
    assert result["mfu"] is None and result["attention"]["spatial"] == "blocked"


def test_benchmark_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--unet-config", "x", "--frames", "1"])


def test_train_video_features_mixes_settings_and_writes_loadable_weights(tmp_path):
    from jax_i2v.eval.video_features import VideoFeatures
    from launch import train_video_features

    tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
    settings = train_video_features.generator_settings(4, [tiny])
    assert settings[0].max_objects == 3 and settings[1].max_objects == 1 and settings[1].max_speed == 0.016
    _, labels, kinds = train_video_features.make_clips(0, 6, 4, np.random.default_rng(0), settings)
    assert kinds.tolist() == [0, 1, 0, 1, 0, 1]
    assert labels["shape"].shape == (6, 3)

    out = tmp_path / "features.safetensors"
    result = train_video_features.main(
        [
            "--steps",
            "2",
            "--train-videos",
            "4",
            "--test-videos",
            "4",
            "--batch-size",
            "2",
            "--frames",
            "4",
            "--out",
            str(out),
            "--dataset-configs",
            tiny,
        ]
    )
    assert set(result["held_out_accuracy_by_setting"]) == {"defaults", tiny}
    videos = (np.random.default_rng(0).random((3, 4, 32, 32, 3)) * 255).astype("uint8")
    assert VideoFeatures.load(str(out)).features(videos).shape == (3, 64)
