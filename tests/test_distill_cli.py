"""launch/distill.py end to end on a micro teacher: a resumed run equals an uninterrupted one, and
the student it exports samples with the consistency sampler."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.params_io import load_for_inference
from jax_i2v.pipeline import I2VPipeline
from jax_i2v.train.runner import TIMING_METRICS

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def _distill(workdir, teacher, images_dir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [
        sys.executable,
        str(ROOT / "launch" / "distill.py"),
        f"--config={ROOT / 'configs' / 'mcm_micro.py'}",
        f"--workdir={workdir}",
        f"--config.teacher={teacher}",
        f"--config.images.dir={images_dir}",
        "--config.tensorboard=False",
        f"--config.distill.steps={STEPS}",
        "--config.distill.checkpoint_every=2",
        *overrides,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _metrics(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_resumed_distillation_equals_an_uninterrupted_one_and_exports_an_lcm_student(micro_run, tmp_path):
    images = tmp_path / "images"
    _distill(tmp_path / "full", micro_run, images)
    _distill(tmp_path / "resumed", micro_run, images, "--config.distill.steps=2")
    assert [m["step"] for m in _metrics(tmp_path / "resumed")] == [1, 2]
    result = _distill(tmp_path / "resumed", micro_run, images)
    assert "resumed from step 2" in result.stderr
    full, resumed = _metrics(tmp_path / "full"), _metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(full, resumed):
        assert {k: v for k, v in a.items() if k not in TIMING_METRICS} == {k: v for k, v in b.items() if k not in TIMING_METRICS}
    _, student = load_for_inference(str(tmp_path / "full" / "student"))
    _, resumed_student = load_for_inference(str(tmp_path / "resumed" / "student"))
    _, teacher = load_for_inference(str(micro_run))
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(student), _leaves(resumed_student)))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(student["unet"]), _leaves(teacher["unet"])))  # it trained
    pipe, config = I2VPipeline.from_checkpoint(str(tmp_path / "full" / "student"))
    assert isinstance(pipe.scheduler, LCMConfig) and config.sampling.steps == 4
    video = pipe(np.zeros((16, 16, 3), np.uint8), "a red circle moves left", num_frames=4, num_steps=2, seed=0)
    assert video.shape == (1, 4, 16, 16, 3) and np.isfinite(video).all()
