"""The command-line entry points run end to end."""

import json
import pathlib

import numpy as np
import pytest

from launch import benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_prints_one_json_line(reference_dir, reference_unet, capsys):
    _, params = reference_unet
    benchmark.main(
        [
            f"--unet_config={reference_dir / 'unet' / 'config.json'}",
            "--batch=1",
            "--frames=3",
            "--latent_hw=8,8",
            "--text_len=4",
            "--warmup=1",
            "--iters=2",
            "--op_profile",
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
    # The UNet's convolutions and projections are traced as what they are.
    assert result["fwdbwd_op_ms"]["convolution"] > 0 and result["fwdbwd_op_ms"]["matmul"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["--unet_config=x", "--frames=1"],
        ["--unet_config=x", "--latent_hw=8"],
        ["--frames=3"],  # no UNet
        ["--unet_config=x", f"--config={ROOT / 'configs' / 'tiny.py'}"],
    ],
)
def test_benchmark_rejects_bad_arguments_in_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit:
        benchmark.main(args)
    assert exit.value.code == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ")


def test_earlier_argparse_spellings_still_parse():
    """Scripts written for the argparse flags (e.g. the reference speed comparison) keep working."""
    from jax_i2v.cli import parse_launcher_flags

    parse_launcher_flags(benchmark.FLAGS, ["--unet-config", "x", "--batch", "2", "--latent-hw", "16", "24", "--text-len", "7"])
    assert benchmark.FLAGS.unet_config == "x" and benchmark.FLAGS.batch == 2
    assert benchmark.FLAGS.latent_hw == [16, 24] and benchmark.FLAGS.text_len == 7
    parse_launcher_flags(benchmark.FLAGS, ["--unet_config=y"])  # a new parse starts from the defaults
    assert benchmark.FLAGS.latent_hw == [32, 32] and benchmark.FLAGS.batch == 1


def test_config_overrides_apply_in_each_parse():
    from jax_i2v.cli import parse_launcher_flags

    micro = str(ROOT / "configs" / "micro.py")
    for layers in (3, 2):
        parse_launcher_flags(benchmark.FLAGS, [f"--config={micro}", f"--config.unet.layers_per_block={layers}"])
        assert benchmark.FLAGS.config.unet.layers_per_block == layers


def test_train_video_features_mixes_settings_and_writes_loadable_weights(tmp_path):
    from jax_i2v.eval.video_features import VideoFeatures
    from launch import train_video_features

    tiny = str(ROOT / "configs" / "tiny.py")
    settings = train_video_features.generator_settings(4, [tiny])
    assert settings[0].max_objects == 3 and settings[1].max_objects == 1 and settings[1].max_speed == 0.016
    _, labels, kinds = train_video_features.make_clips(0, 6, 4, np.random.default_rng(0), settings)
    assert kinds.tolist() == [0, 1, 0, 1, 0, 1]
    assert labels["shape"].shape == (6, 3)

    out = tmp_path / "features.safetensors"
    result = train_video_features.main(
        ["--steps=2", "--train_videos=4", "--test_videos=4", "--batch_size=2", "--frames=4", f"--out={out}", f"--dataset_configs={tiny}"]
    )
    assert set(result["held_out_accuracy_by_setting"]) == {"defaults", tiny}
    videos = (np.random.default_rng(0).random((3, 4, 32, 32, 3)) * 255).astype("uint8")
    assert VideoFeatures.load(str(out)).features(videos).shape == (3, 64)
