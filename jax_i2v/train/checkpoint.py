"""Orbax checkpoints of the train state, the data iterator and the config.

Saves are asynchronous (training continues while arrays are written) and keep the newest
`max_to_keep`. Restores read straight into the target shardings, which may come from a different
mesh than the one that saved. Each host saves its own Grain iterator state.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import grain
import jax
import orbax.checkpoint as ocp

from jax_i2v.parallel.hosts import all_processes_agree, wait_for_all_processes
from jax_i2v.parallel.partitioning import with_shardings
from jax_i2v.train.runtime import RunError
from jax_i2v.train.state import TrainState

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._saved_step = self.manager.latest_step()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator=None, config: Optional[dict] = None) -> None:
        """Saves `step`, unless it is the step saved (or restored from) last: loops save at their
        cadence and again when stopping, which may be the same step."""
        if step == self._saved_step:
            return
        self._saved_step = step
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, state_like: TrainState, shardings: TrainState, data_iterator=None, step: Optional[int] = None) -> TrainState:
        """The saved state (shape/dtype of `state_like`, placed with `shardings`); the data
        iterator, if given, is set to its saved position."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(with_shardings(state_like, shardings))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_newest_good(self, state_like: TrainState, shardings: TrainState, data_iterator=None) -> Optional[TrainState]:
        """`restore` of the newest checkpoint that restores, or None when there is none at all.

        A checkpoint that fails (a file truncated or missing) is logged with its step, renamed
        `STEP.damaged` (kept for inspection, out of the way of the step's next save) and the one
        before it tried. Every process must succeed on the same step; when none restores, raises.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, error = self.restore(state_like, shardings, data_iterator, step=step), None
            except Exception as exception:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
                state, error = None, exception
            if all_processes_agree(error is None, f"restored_step_{step}"):
                self._saved_step = step
                return state
            log.warning(
                "checkpoint at step %d is damaged and was set aside (%s): trying the previous one",
                step,
                f"{type(error).__name__}: {error}".splitlines()[0][:300] if error else "failed on another process",
            )
            self._set_aside(step)
        if self.manager.all_steps():
            raise RunError(f"no checkpoint in {self.directory} could be restored (each was renamed STEP.damaged)")
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            path = os.path.join(self.directory, str(step))
            os.replace(path, f"{path}.damaged")
        wait_for_all_processes(f"checkpoint {step} set aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
