"""What a training loop needs besides its step: config sections, preemption, the time budget and
the metrics log (shared by pretraining and MCM distillation)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run that cannot go on for a reason its message gives in full (e.g. a diverged loss)."""


class Preemption:
    """Turns a preemption notice into a stop the loop checks after every step.

    One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption service (set
    up by `jax.distributed.initialize`) catches the SIGTERM on any host and agrees on one step at
    which every host stops, without a collective per step.
    """

    def __init__(self):
        self.requested = False
        self._multi_process = jax.process_count() > 1
        self._previous = None if self._multi_process else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def config_section(config: ml_collections.ConfigDict, name: str, cls):
    """`cls(**config[name])` with unknown keys and bad values reported as one ValueError naming the section."""
    if name not in config:
        raise ValueError(f"config has no section {name!r}")
    values = config[name].to_dict()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"config.{name}: unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"config.{name}: {error}") from None


def _metrics_log(path: str, last_step: int):
    """`metrics.jsonl` opened for appending, with records past `last_step` (logged after the
    checkpoint a crashed run restarts from) dropped so each step appears once."""
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
        with open(path, "w") as f:
            f.writelines(kept)
    return open(path, "a")


def past_time_limit(started: float, limit_minutes: float) -> bool:
    """Whether this invocation has run `limit_minutes` (0: never), as process 0 sees it."""
    if not limit_minutes:
        return False
    past = time.perf_counter() - started > 60.0 * limit_minutes
    if jax.process_count() > 1:
        past = bool(multihost_utils.broadcast_one_to_all(np.asarray(past)))
    return past


class MetricsLog:
    """On process 0: `WORKDIR/metrics.jsonl` (one JSON object per logged step; records past
    `last_step`, logged after the checkpoint a crashed run restarts from, are dropped so each step
    appears once) and, with `tensorboard`, TensorBoard events under WORKDIR/tensorboard."""

    def __init__(self, workdir: str, last_step: int, tensorboard: bool = True):
        self._file = self._writer = None
        if jax.process_index() != 0:
            return
        self._file = _metrics_log(os.path.join(workdir, "metrics.jsonl"), last_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"step": step, **metrics}) + "\n")
            self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        for sink in (self._file, self._writer):
            if sink is not None:
                sink.close()


@dataclasses.dataclass
class Cadence:
    """When a loop logs, saves and stops after a step: every `log_every` / `checkpoint_every` steps
    and at `steps`; past the time limit (checked at log steps only, where hosts can agree on it
    without a collective every step), which also logs and saves; on preemption (`preempted`)."""

    steps: int
    log_every: int
    checkpoint_every: int
    time_limit_minutes: float
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def after(self, step: int) -> tuple[bool, bool, bool]:
        """(log, save, out of time) after `step`."""
        out_of_time = step % self.log_every == 0 and past_time_limit(self.started, self.time_limit_minutes)
        last = step == self.steps or out_of_time
        return step % self.log_every == 0 or last, step % self.checkpoint_every == 0 or last, out_of_time

    def should_stop(self, step: int, out_of_time: bool, preemption: Preemption) -> bool:
        """Whether to stop after `step` (past the time limit, or preempted), logged with the reason.
        The caller saves: a step saved already at the cadence is not saved twice."""
        if out_of_time:
            log.warning("time limit of %g minutes reached: stopped at step %d", self.time_limit_minutes, step)
            return True
        if preemption.should_stop(step):
            log.warning("preempted: saving step %d and stopping", step)
            return True
        return False
