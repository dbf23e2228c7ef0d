"""A run's params for inference and export: `export_params` folders and reading params (EMA if
kept) from a training workdir or export, on one device or split over a mesh. No optimizer state."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jax_i2v.parallel.partitioning import DEFAULT_RULES, params_shardings, with_shardings

EXPORT_PARAMS, EXPORT_CONFIG = "params", "config.json"


def parameter_count(tree: Any) -> int:
    """Scalars in a params tree (arrays or ShapeDtypeStructs)."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


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
    return with_shardings(shapes, shardings)


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
