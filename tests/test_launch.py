"""The command-line entry points run end to end."""

import json

import pytest

from launch import benchmark


@pytest.mark.slow
def test_benchmark_prints_one_json_line(reference_dir, reference_unet, capsys):
    _, params = reference_unet
    benchmark.main(
        ["--unet-config", str(reference_dir / "unet" / "config.json"), "--batch", "1", "--frames", "3",
         "--latent-hw", "8", "8", "--text-len", "4", "--warmup", "1", "--iters", "2"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["params"] == sum(x.size for x in __import__("jax").tree_util.tree_leaves(params))
    for key in ("compile_s", "fwd_ms", "fwdbwd_ms"):
        assert result[key] > 0


def test_benchmark_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--unet-config", "x", "--frames", "1"])
