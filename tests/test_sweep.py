"""`launch/sweep.py` expansion and tables, and the ablation configs (one ingredient off each)."""

import json
import pathlib

import pytest

from jax_i2v.config_utils import load_config, unet_config
from launch import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = {
    "no_spatial_first_frame_attention": {"unet.first_frame_condition_mode": "input_only"},
    "no_temporal_first_frame_window": {"unet.augment_temporal_attention": False},
    "no_frameinit": {"sampling.frameinit": "none"},
    "no_frame_concat": {"unet.first_frame_condition_mode": "none"},
}


def _flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_changes_exactly_its_ingredient(name):
    base = _flat(load_config(str(ROOT / "configs" / "tiny.py")).to_dict())
    config = load_config(str(ROOT / "configs" / "ablations" / f"{name}.py"))
    unet_config(config)  # still a valid UNet
    changed = {k: v for k, v in _flat(config.to_dict()).items() if base.get(k) != v}
    assert changed == ABLATIONS[name]


def _scores(value):
    return {column: value for column in sweep.COLUMNS}


def test_print_commands_expands_configs_times_grid(capsys):
    configs = [str(ROOT / "configs" / "tiny.py"), str(ROOT / "configs" / "ablations" / "no_frameinit.py")]
    sweep.main(
        [
            "--workdir=w",
            "--configs",
            *configs,
            "--grid=train.seed=0,1",
            "--grid=optim.learning_rate=1e-3",
            "--print_commands",
            "--config.train.steps=7",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all("evaluate.py" in line for line in lines)
    assert all("--config.train.steps=7" in line and "--sampling.frameinit=gaussian" in line for line in lines[:2])
    assert "--config.train.seed=0" in lines[0] and "--config.train.seed=1" in lines[1]
    # no_frameinit differs from tiny only at sampling: it benchmarks tiny's model with FrameInit off.
    assert "train.py" not in lines[3]
    assert "--checkpoint=w/tiny_seed1_learning_rate1e-3" in lines[3] and "--sampling.frameinit=none" in lines[3]
    assert "--out=w/no_frameinit_seed1_learning_rate1e-3/benchmark.json" in lines[3]


def test_finished_runs_are_collected_into_markdown_and_csv(tmp_path, capsys):
    for name, value in (("tiny_seed0", 0.1), ("tiny_seed1", 0.3)):
        (tmp_path / name).mkdir()
        result = {"model": _scores(value), "ground_truth": _scores(0.0), "static": _scores(1.0)}
        (tmp_path / name / "benchmark.json").write_text(json.dumps(result))
    rows = sweep.main([f"--workdir={tmp_path}", f"--configs={ROOT / 'configs' / 'tiny.py'}", "--grid=train.seed=0,1"])
    assert [name for name, _ in rows] == ["tiny_seed0", "tiny_seed1"]
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:2] == ["run", "model"]
    assert [line.split(",")[:3] for line in csv_lines[1:]] == [
        ["tiny_seed0", "model", "0.1"],
        ["tiny_seed1", "model", "0.3"],
        ["-", "ground_truth", "0"],
        ["-", "static", "1"],
    ]
    assert (tmp_path / "results.md").read_text() in capsys.readouterr().out


def test_bad_grid_is_rejected():
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        sweep.parse_grid(["train.seed"])
