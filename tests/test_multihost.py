"""Training and distillation with parameters split across processes (`tests/multihost.py`: two
processes of two devices, one `fsdp` axis of 4 over both) equal one process holding the same four
devices: losses, checkpoints, a SIGTERM to one process, previews, exports and the student."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import sys
import time

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from multihost import FSDP_MESH, PROCESSES, finish, run_one_process, start_processes
from safetensors.numpy import load_file

from jax_i2v.params_io import load_for_inference

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
# Adam's update lr * g / (|g| + eps) with eps = 1e-8 turns a gradient entry that is zero up to
# rounding (attention key biases: softmax ignores a shift shared by all keys) into a full step whose
# sign depends on the reduction order. A larger eps keeps the update a smooth function of the
# gradient, so the comparison tests the parallelism, not that ill-conditioning.
ADAM_EPS = ["--config.optim.eps=1e-3"]


def _train(workdir, data_dir, *overrides):
    return [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        f"--config={ROOT / 'configs' / 'micro.py'}",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1000",
        f"--config.train.sample_every={STEPS}",
        "--config.train.sample_videos=2",
        "--config.tensorboard=False",
        *ADAM_EPS,
        *FSDP_MESH,
        *overrides,
    ]


def _export(checkpoint, out):
    return [
        sys.executable,
        str(ROOT / "launch" / "export_params.py"),
        f"--checkpoint={checkpoint}",
        f"--out={out}/params",
        f"--unet_folder={out}/unet",
    ]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines())}


def _state_split(stderr: str) -> tuple[float, float]:
    local, total = re.search(r"state: ([\d.]+) MB on this process \(unique shards\) of ([\d.]+) MB", stderr).groups()
    return float(local), float(total)


@pytest.mark.slow
def test_training_split_across_processes_equals_one_process(tmp_path):
    data_dir = tmp_path / "data"
    run_one_process(_train(tmp_path / "single", data_dir))

    workdir = tmp_path / "multi"
    workers = start_processes(_train(workdir, data_dir))
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 900
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        assert all(w.poll() is None for w in workers), workers[0].stderr.read()[-3000:]
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGTERM)  # one host preempted: every host stops after the same step
    finish(workers)
    stopped_at = max(_losses(workdir))
    assert stopped_at < STEPS, "the run finished before the signal arrived"
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped_at]

    outputs = finish(start_processes(_train(workdir, data_dir)))
    assert all(f"resumed from step {stopped_at}" in stderr for _, stderr in outputs)
    for _, stderr in outputs:  # each process holds about half of the state, not all of it
        local, total = _state_split(stderr)
        assert local < 0.7 * total, (local, total)
    got, want = _losses(workdir), _losses(tmp_path / "single")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    _, single_params = load_for_inference(str(tmp_path / "single"))
    _, multi_params = load_for_inference(str(workdir))
    single_flat, multi_flat = flatten_dict(single_params), flatten_dict(multi_params)
    assert single_flat.keys() == multi_flat.keys()
    for key in single_flat:
        np.testing.assert_allclose(multi_flat[key], single_flat[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
    # Previews sampled under the training mesh, written by process 0.
    assert sorted(p.name for p in (workdir / "samples").glob("*.gif")) == [f"step_{STEPS:06d}_{i}.gif" for i in range(2)]

    # The exports of the run's checkpoint, by two processes each reading its shards and by one.
    finish(start_processes(_export(workdir, tmp_path / "export_multi")))
    run_one_process(_export(workdir, tmp_path / "export_single"))
    _, exported_multi = load_for_inference(str(tmp_path / "export_multi" / "params"))
    _, exported_single = load_for_inference(str(tmp_path / "export_single" / "params"))
    trained_flat = multi_flat
    multi_flat, single_flat = flatten_dict(exported_multi), flatten_dict(exported_single)
    assert multi_flat.keys() == single_flat.keys() == trained_flat.keys()
    for key in single_flat:
        np.testing.assert_array_equal(multi_flat[key], single_flat[key], err_msg=str(key))
        np.testing.assert_array_equal(multi_flat[key], trained_flat[key], err_msg=str(key))
    unet_multi = load_file(tmp_path / "export_multi" / "unet" / "diffusion_pytorch_model.safetensors")
    unet_single = load_file(tmp_path / "export_single" / "unet" / "diffusion_pytorch_model.safetensors")
    assert unet_multi.keys() == unet_single.keys() and len(unet_single) > 50
    for key in unet_single:
        np.testing.assert_array_equal(unet_multi[key], unet_single[key], err_msg=str(key))


def _distill(workdir, teacher, images_dir):
    return [
        sys.executable,
        str(ROOT / "launch" / "distill.py"),
        f"--config={ROOT / 'configs' / 'mcm_micro.py'}",
        f"--workdir={workdir}",
        f"--config.teacher={teacher}",
        f"--config.images.dir={images_dir}",
        "--config.tensorboard=False",
        "--config.distill.steps=3",
        "--config.distill.checkpoint_every=1000",
        *FSDP_MESH,
    ]


@pytest.mark.slow
def test_distillation_split_across_processes_equals_one_process(micro_run, tmp_path):
    run_one_process(_distill(tmp_path / "single", micro_run, tmp_path / "images_single"))
    # Process 1 first: it must wait for process 0 to build the discriminator's image dataset.
    outputs = finish(start_processes(_distill(tmp_path / "multi", micro_run, tmp_path / "images_multi"), order=reversed(range(PROCESSES))))
    local, total = _state_split(outputs[1][1])
    assert local < 0.7 * total, (local, total)
    single, multi = (
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("single", "multi")
    )
    assert [r["step"] for r in multi] == [1, 2, 3]
    for a, b in zip(single, multi):
        for key in ("cd_loss", "d_loss", "g_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    _, student_single = load_for_inference(str(tmp_path / "single" / "student"))
    _, student_multi = load_for_inference(str(tmp_path / "multi" / "student"))
    single_flat, multi_flat = flatten_dict(student_single), flatten_dict(student_multi)
    assert single_flat.keys() == multi_flat.keys()
    for key in single_flat:
        np.testing.assert_allclose(multi_flat[key], single_flat[key], rtol=1e-4, atol=1e-6, err_msg=str(key))
