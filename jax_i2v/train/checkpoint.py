"""Orbax checkpoints of the train state, the data iterator and the config.

Saves are asynchronous (training continues while arrays are written) and keep the newest
`max_to_keep`. Restores read straight into the target shardings, which may come from a different
mesh than the one that saved. Each host saves its own Grain iterator state.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from jax_i2v.train.state import TrainState


def _abstract(state: TrainState, shardings: TrainState) -> TrainState:
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator=None, config: Optional[dict] = None) -> None:
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
        items = {"state": ocp.args.StandardRestore(_abstract(state_like, shardings))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def export_params(directory: str, params: Any) -> str:
    """A params-only checkpoint (for sampling, fine-tuning or conversion), written synchronously."""
    path = os.path.abspath(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, params, force=True)
    return path


def load_params(directory: str, params_like: Any = None) -> Any:
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.abspath(directory), params_like)
