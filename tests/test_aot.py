"""`launch/aot_compile.py` for a small TPU topology (needs libtpu, from the `tpu` extra)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")

from launch import aot_compile  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _aot_compile(*args):
    # Its own process: the TPU compiler is loaded explicitly, and the compilation-cache setting
    # aot_compile makes only holds in a process that has not compiled anything yet.
    command = [sys.executable, str(ROOT / "launch" / "aot_compile.py"), "--topology=v5e:2x2", "--mesh=data=2,fsdp=2", *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "persistent compilation cache" not in completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


# One test for both steps: libtpu takes one process per machine, so the compiles run in turn.
@pytest.mark.slow
def test_the_train_and_distillation_steps_compile_for_a_tpu_topology_and_report_memory_and_flops():
    result = _aot_compile(f"--config={ROOT / 'configs' / 'micro.py'}", "--config.train.ema_decay=0.999")
    assert result["step"] == "train"
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

    # The MCM step launch/distill.py runs, for a teacher given by its experiment config.
    # At the optimisation level the config sets (O1: the quicker compile).
    mcm = _aot_compile(
        f"--config={ROOT / 'configs' / 'mcm_micro.py'}",
        f"--teacher_config={ROOT / 'configs' / 'micro.py'}",
        "--config.xla_optimization_level=O1",
    )
    assert mcm["step"] == "mcm" and mcm["inputs"] == "video" and mcm["global_batch"] == 4
    assert result["xla_optimization_level"] == "default" and mcm["xla_optimization_level"] == "O1"
    assert mcm["attention"]["spatial"] == "splash" and mcm["pallas_calls"] > 0
    # The teacher is the micro UNet the train step above trains (with micro's caption encoder);
    # frozen fp32, it is an argument split at most two ways (FSDP), beside the smaller LoRA
    # student and heads that are trained.
    assert mcm["params"] < mcm["teacher_params"] < result["params"]
    assert mcm["argument_bytes"] >= 4 * mcm["teacher_params"] / 2
    assert mcm["temp_bytes"] > 0 and mcm["model_flops_per_step"] is None


def test_bad_mesh_argument_is_rejected():
    with pytest.raises(ValueError, match="AXIS=SIZE"):
        aot_compile.mesh_sizes("pipeline=2")
