"""The run skeleton shared by training and distillation (`jax_i2v/train/runner.py`), driven by the
trainer's own step (`make_train_step`) on a small regression model: non-finite steps are skipped
and counted and too many stop the run without saving; a damaged newest checkpoint is set aside and
the run resumes from the one before, exactly."""

from __future__ import annotations

import json
import logging
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.train.optimizer import OptimizerConfig, make_optimizer
from jax_i2v.train.runner import NonFiniteError, RunSettings, run_steps
from jax_i2v.train.state import abstract_train_state, create_train_state, state_shardings
from jax_i2v.train.step import StepConfig, make_train_step

WIDTH = 8
NAN_STEPS = {3, 4}  # 1-based steps whose batch holds a NaN


def _init_params(rng):
    return {"dense": {"kernel": jax.random.normal(rng, (WIDTH, WIDTH)) * 0.1, "bias": jnp.zeros((WIDTH,))}}


def _loss(params, batch, null_text, rng):
    del null_text, rng
    prediction = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean((prediction - batch["y"]) ** 2)


def _example(index: int, poisoned: frozenset) -> dict:
    """Step `index + 1`'s batch: the same for every run, NaN at the poisoned steps."""
    rng = np.random.default_rng(index)
    x = rng.standard_normal((4, WIDTH)).astype(np.float32)
    if index + 1 in poisoned:
        x[0, 0] = np.nan
    return {"x": x, "y": np.roll(x, 1, axis=-1)}


@pytest.fixture(scope="module")
def program():
    mesh = create_mesh({"data": 1}, devices=jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    rng = jax.random.key(0)
    abstract = abstract_train_state(_init_params, optimizer, rng, use_ema=True)
    shardings = state_shardings(abstract, optimizer, mesh)
    step = make_train_step(_loss, optimizer, lambda count: 1e-2, shardings, mesh, config=StepConfig(ema_decay=0.9))
    init = lambda: create_train_state(_init_params, optimizer, rng, mesh, use_ema=True)
    return mesh, abstract, shardings, step, init


def _run(program, workdir, steps, poisoned=frozenset(), max_nonfinite_steps=3, checkpoint_every=2):
    mesh, abstract, shardings, step, init = program
    data = iter(grain.MapDataset.range(1000).map(lambda i: _example(i, poisoned)).to_iter_dataset())

    def next_batch():
        return jax.device_put(next(data), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    settings = RunSettings(
        steps=steps,
        log_every=1,
        checkpoint_every=checkpoint_every,
        time_limit_minutes=0,
        max_nonfinite_steps=max_nonfinite_steps,
        keep_checkpoints=5,
        examples_per_step=4,
    )
    return run_steps(
        str(workdir),
        settings,
        abstract,
        shardings,
        init,
        step,
        next_batch,
        extra_args=(jnp.zeros(()), jax.random.key(1)),
        data_iterator=data,
        tensorboard=False,
        started=time.perf_counter(),
    )


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get((state.params, state.opt_state, state.ema_params)))]


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(program, tmp_path):
    before = _run(program, tmp_path / "before", 2)
    result = _run(program, tmp_path / "poisoned", 6, poisoned=frozenset(NAN_STEPS))
    records = _records(tmp_path / "poisoned")
    assert [r["nonfinite_steps"] for r in records] == [0, 0, 1, 1, 0, 0]
    assert records[-1]["nonfinite_steps_total"] == 2
    assert all(np.isfinite(r["grad_norm"]) for r in records if r["step"] not in NAN_STEPS)
    assert int(result.state.step) == 6
    # The skipped steps changed nothing: resuming the poisoned run's checkpoint at step 4 (two
    # skips after step 2) holds exactly step 2's parameters, optimizer state and EMA.
    from jax_i2v.train.checkpoint import Checkpointer

    _, abstract, shardings, *_ = program
    with_skips = Checkpointer(str(tmp_path / "poisoned" / "checkpoints"))
    at_4 = with_skips.restore(abstract, shardings, step=4)
    with_skips.close()
    for a, b in zip(_leaves(at_4), _leaves(before.state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_too_many_nonfinite_steps_stop_without_saving(program, tmp_path):
    poisoned = frozenset(range(3, 20))
    workdir = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="3 consecutive steps had a non-finite loss"):
        _run(program, workdir, 10, poisoned=poisoned, max_nonfinite_steps=3)
    # Steps 3, 4, 5 skipped: the run stopped after logging step 5, before the save a step-6 cadence
    # would make and without the save of a normal stop.
    assert sorted(p for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == ["2", "4"]
    assert max(r["step"] for r in _records(workdir)) == 5


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(program, tmp_path, caplog):
    reference = _run(program, tmp_path / "reference", 6)
    workdir = tmp_path / "damaged"
    _run(program, workdir, 4)  # checkpoints at 2 and 4
    newest = workdir / "checkpoints" / "4" / "state"
    largest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        resumed = _run(program, workdir, 6)
    assert "checkpoint at step 4 is damaged" in caplog.text
    assert (workdir / "checkpoints" / "4.damaged").is_dir()
    records = _records(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # steps 3-4 replayed once, not logged twice
    assert [r["loss"] for r in records] == [r["loss"] for r in _records(tmp_path / "reference")]
    for a, b in zip(_leaves(resumed.state), _leaves(reference.state)):
        np.testing.assert_array_equal(a, b)
