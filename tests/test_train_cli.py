"""`launch/train.py` end to end with configs/micro.py: preemption, resume, and startup errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8


def _command(workdir, data_dir, *overrides):
    return [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={ROOT / 'configs' / 'micro.py'}",
            f"--workdir={workdir}", f"--config.data.dir={data_dir}", f"--config.train.steps={STEPS}",
            "--config.train.checkpoint_every=1000", "--config.tensorboard=False", *overrides]


def _env(devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _losses(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    data_dir = tmp_path / "data"
    full = subprocess.run(_command(tmp_path / "full", data_dir), env=_env(), capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = _losses(tmp_path / "full")
    assert sorted(reference) == list(range(1, STEPS + 1))

    workdir = tmp_path / "preempted"
    process = subprocess.Popen(_command(workdir, data_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    stopped_at = max(_losses(workdir))
    assert stopped_at < STEPS, "the run finished before the signal arrived"
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()

    resumed = subprocess.run(_command(workdir, data_dir), env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    assert _losses(workdir) == reference  # every step, bit for bit


@pytest.mark.parametrize("overrides,devices,message", [
    (["--config.optim.schedule=linear"], 1, "error: config.optim: optim.schedule must be one of"),
    (["--config.optim.lr=0.1"], 1, "error: --config.optim.lr: optim has no key 'lr'"),
    (["--config.train.batch_size=abc"], 1, "error: "),
    (["--config.data.build_if_missing=False"], 1, "error: dataset directory"),
    (["--config.train.batch_size=6"], 8, "error: global batch size 6 is not divisible by data x fsdp = 8"),
])
def test_startup_errors_are_one_explanatory_line(tmp_path, overrides, devices, message):
    result = subprocess.run(_command(tmp_path / "run", tmp_path / "no_data", *overrides), env=_env(devices),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if message in line]
    assert len(lines) == 1, result.stderr[-3000:]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    """Two CPU processes (gloo collectives, one device each, mesh data=2) vs one process with one device."""
    data_dir = tmp_path / "data"
    steps = ["--config.train.steps=3"]
    single = subprocess.run(_command(tmp_path / "single", data_dir, *steps), env=_env(), capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    workers = [
        subprocess.Popen(
            _command(tmp_path / "multi", data_dir, *steps, "--distributed", "--cpu_collectives",
                     f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"),
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-3000:]
    got, want = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert sorted(got) == [1, 2, 3]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5)
