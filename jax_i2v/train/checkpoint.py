"""Orbax checkpoints of the train state, the data iterator and the config.

Saves are asynchronous (training continues while arrays are written) and keep the newest
`max_to_keep`. Restores read straight into the target shardings, which may come from a different
mesh than the one that saved. Each host saves its own Grain iterator state.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jax_i2v.cli import RunError
from jax_i2v.parallel.partitioning import DEFAULT_RULES, params_shardings
from jax_i2v.train.state import TrainState

log = logging.getLogger(__name__)


def _all_processes_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _abstract(state: TrainState, shardings: TrainState) -> TrainState:
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


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
        items = {"state": ocp.args.StandardRestore(_abstract(state_like, shardings))}
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
            if _all_processes_agree(error is None):
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
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


EXPORT_PARAMS, EXPORT_CONFIG = "params", "config.json"


def export_params(directory: str, params: Any, config: Optional[dict] = None) -> str:
    """A params-only export (for sampling, fine-tuning or conversion), written synchronously:
    `DIR/params` (Orbax) and, given the experiment config, `DIR/config.json`."""
    path = os.path.abspath(directory)
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(path, EXPORT_PARAMS), params, force=True)
    if config is not None and jax.process_index() == 0:
        with open(os.path.join(path, EXPORT_CONFIG), "w") as f:
            json.dump(config, f, indent=1)
    return path


def load_params(directory: str, params_like: Any = None) -> Any:
    """The params of an `export_params` folder, as `params_like` (shapes/shardings) if given."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(os.path.abspath(directory), EXPORT_PARAMS), params_like)


def _restore_target(metadata_tree: Any, mesh: Optional[Mesh], rules) -> Any:
    """ShapeDtypeStructs of a saved params tree: on one device, or sharded over `mesh` by `rules`."""
    shapes = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata_tree)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, shapes)
    else:
        shardings = params_shardings(shapes, mesh, rules)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def load_for_inference(path: str, use_ema: bool = True, mesh: Optional[Mesh] = None, rules=DEFAULT_RULES) -> tuple[dict, Any]:
    """(config dict, params) from a training workdir (newest checkpoint), its `checkpoints/`
    folder, one `checkpoints/STEP` folder, or an `export_params` folder: on one device, or split
    over `mesh` by the sharding `rules` (each process reads only its shards).

    Only the params are read (EMA params when the run kept them and `use_ema`), not the optimizer
    state.
    """
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, EXPORT_CONFIG)):
        with open(os.path.join(path, EXPORT_CONFIG)) as f:
            config = json.load(f)
        metadata = ocp.StandardCheckpointer().metadata(os.path.join(path, EXPORT_PARAMS)).item_metadata.tree
        return config, load_params(path, _restore_target(metadata, mesh, rules))
    if os.path.isdir(os.path.join(path, EXPORT_PARAMS)):
        raise FileNotFoundError(f"{path} holds exported params but no {EXPORT_CONFIG}; re-export with the config")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    step = None
    if os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "state")):
        path, step = os.path.dirname(path), int(os.path.basename(path))
    manager = ocp.CheckpointManager(
        path,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint or exported params in {path}")
    state_tree = manager.item_metadata(step)["state"].tree
    key = "ema_params" if use_ema and state_tree.get("ema_params") is not None else "params"
    target = {key: _restore_target(state_tree[key], mesh, rules)}
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
            config=ocp.args.JsonRestore(),
        ),
    )
    manager.close()
    return restored["config"], restored["state"][key]
