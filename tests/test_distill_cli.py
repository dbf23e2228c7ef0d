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
    video = pipe(np.zeros((16, 16, 3), np.uint8), "a red circle moves left", num_frames=4, steps=2, seed=0)
    assert video.shape == (1, 4, 16, 16, 3) and np.isfinite(video).all()


_STEPS_WITHOUT_TRANSFERS = r"""
import json, sys
import jax
import numpy as np
from jax._src.array import ArrayImpl
from jax_i2v.config_utils import config_from_dict, load_config
from jax_i2v.distill.loop import abstract_mcm_step, distill_program
from jax_i2v.params_io import load_for_inference

config = load_config(sys.argv[1])
config.teacher, config.images.dir = sys.argv[2], sys.argv[3]
program = distill_program(config)
state = program.init_state()
# What aot_compile lowers for a pod, from the teacher's config alone: the same arguments.
teacher_config = config_from_dict(load_for_inference(sys.argv[2])[0])
_, abstract = abstract_mcm_step(config, teacher_config, program.mesh, config.distill.batch_size // jax.device_count())
leaves = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
real = leaves((state, program.next_batch(), *program.extra_args))
mismatched = [jax.tree_util.keystr(path) for (path, a), (_, b) in zip(real, leaves(abstract))
              if (a.shape, a.dtype) != (b.shape, b.dtype) or not a.sharding.is_equivalent_to(b.sharding, a.ndim)]
mismatched += [] if len(real) == len(leaves(abstract)) else ["tree structure"]
state, metrics = program.step(state, program.next_batch(), *program.extra_args)  # compiles
# Any jax.Array read on the host (np.asarray, float, device_get) goes through ArrayImpl._value:
# count those, as the CPU backend does not enforce the device-to-host transfer guard.
reads, value = [], ArrayImpl._value
ArrayImpl._value = property(lambda self: reads.append(self.shape) or value.fget(self))
with jax.transfer_guard("disallow"):  # no implicit host-to-device (or device-to-device) transfer
    for _ in range(2):
        state, metrics = program.step(state, program.next_batch(), *program.extra_args)
    per_step_reads = list(reads)
    logged = jax.device_get(metrics)  # what a log step fetches: explicit, and counted
    try:
        program.step(state, {**program.next_batch(), "frame_stride": np.ones(4, np.float32)}, *program.extra_args)
        guarded = False
    except Exception as error:  # the guard's teeth: a host array into the step
        guarded = "Disallowed host-to-device transfer" in str(error)
ArrayImpl._value = value
print(json.dumps({"per_step_reads": per_step_reads, "metrics_reads": len(reads) - len(per_step_reads), "mismatched": mismatched,
                  "guarded": guarded, "step": int(state.step), "cd_loss": float(logged["cd_loss"])}))
"""


@pytest.mark.slow
def test_distillation_steps_move_no_arrays_between_host_and_devices(micro_run, tmp_path):
    """The loop's batches (this host's rows of raw uint8 clips and token ids) and step: two steps
    with no implicit transfer and no jax.Array read on the host; only the logged metrics are. And
    the arguments `abstract_mcm_step` describes for ahead-of-time compiles match the real ones."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [
        sys.executable,
        "-c",
        _STEPS_WITHOUT_TRANSFERS,
        str(ROOT / "configs" / "mcm_micro.py"),
        str(micro_run),
        str(tmp_path / "images"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["per_step_reads"] == [] and report["metrics_reads"] > 0 and report["guarded"]
    # aot_compile's abstract arguments (from the teacher's config alone) are the loop's, leaf by leaf.
    assert report["mismatched"] == []
    assert report["step"] == 3 and np.isfinite(report["cd_loss"])
