"""`launch/aot_compile.py` for a small TPU topology (needs libtpu, from the `tpu` extra)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")

from launch import aot_compile  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_compiles_for_a_tpu_topology_and_reports_memory_and_flops():
    # Its own process: the TPU compiler is loaded explicitly, and the compilation-cache setting
    # aot_compile makes only holds in a process that has not compiled anything yet.
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "aot_compile.py"),
            f"--config={ROOT / 'configs' / 'micro.py'}",
            "--topology=v5e:2x2",
            "--mesh=data=2,fsdp=2",
            "--config.train.ema_decay=0.999",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "persistent compilation cache" not in completed.stderr
    result = json.loads(completed.stdout.splitlines()[-1])
    assert result["devices"] == 4 and result["device_kind"].startswith("TPU v5")
    assert result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and result["global_batch"] == 4
    # "auto" resolved for the topology's TPU devices, not this CPU host: the Pallas splash kernel.
    assert result["attention"] == {"spatial": "splash", "cross": "xla", "temporal": "xla"}
    assert result["pallas_calls"] > 0
    # fp32 params + two Adam moments + the EMA the override switched on (the trainer's own state),
    # split at most four ways (FSDP), padded by TPU tiling.
    state_bytes = 4 * 4 * result["params"]
    assert state_bytes / 4 <= result["argument_bytes"] < 3 * state_bytes
    assert result["total_bytes"] >= result["argument_bytes"] - result["alias_bytes"]
    assert result["flops_per_step"] > 0
    # Every op of this step is outside loops, so XLA's count covers the model's matmuls and convs.
    assert abs(result["model_flops_per_step"] / (result["flops_per_step"] * result["devices"]) - 1) < 0.15


def test_bad_mesh_argument_is_rejected():
    with pytest.raises(ValueError, match="AXIS=SIZE"):
        aot_compile.mesh_sizes("pipeline=2")
