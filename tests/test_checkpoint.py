import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.params_io import export_params, load_for_inference, load_params
from jax_i2v.train.checkpoint import Checkpointer
from jax_i2v.train.optimizer import OptimizerConfig, make_optimizer
from jax_i2v.train.state import state_from_params, state_shardings

PARAMS = {"proj": {"kernel": np.arange(64 * 16, dtype=np.float32).reshape(64, 16)}, "to_q": {"kernel": np.ones((16, 32), np.float32)}}


def test_restore_onto_a_different_mesh(tmp_path):
    optimizer = make_optimizer(OptimizerConfig())
    saved_mesh = create_mesh({"data": 8})
    state = state_from_params(PARAMS, optimizer, saved_mesh, use_ema=True)
    state = state.replace(step=jnp.int32(7))
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    checkpointer.save(7, state, config={"note": "saved on data=8"})
    checkpointer.close()

    target_mesh = create_mesh({"data": 2, "fsdp": 4})
    target = state_shardings(state, optimizer, target_mesh)
    restored = Checkpointer(str(tmp_path / "ckpt")).restore(state, target)
    assert int(restored.step) == 7
    kernel = restored.params["proj"]["kernel"]
    np.testing.assert_array_equal(kernel, PARAMS["proj"]["kernel"])
    assert kernel.sharding.mesh.shape == target_mesh.shape
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (64, 4)
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_keeps_the_newest_checkpoints(tmp_path):
    optimizer = make_optimizer(OptimizerConfig())
    mesh = create_mesh({"data": 1}, devices=jax.devices()[:1])
    state = state_from_params(PARAMS, optimizer, mesh)
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    for step in (1, 2, 3):
        checkpointer.save(step, state)
    checkpointer.close()
    assert sorted(Checkpointer(str(tmp_path / "ckpt")).manager.all_steps()) == [2, 3]


def _assert_tree_equal(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_inference_loading_reads_ema_or_raw_params_from_a_sharded_run_and_an_export(tmp_path):
    optimizer = make_optimizer(OptimizerConfig())
    mesh = create_mesh({"data": 2, "fsdp": 4})
    state = state_from_params(PARAMS, optimizer, mesh, use_ema=True)
    ema = jax.tree_util.tree_map(lambda x: x * 0.5, state.params)
    state = state.replace(ema_params=ema)
    checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    checkpointer.save(3, state, config={"train": {"steps": 3}})
    checkpointer.save(5, state.replace(params=ema, ema_params=state.params), config={"train": {"steps": 5}})
    checkpointer.close()

    config, params = load_for_inference(str(tmp_path / "run"))  # newest step, EMA preferred
    assert config == {"train": {"steps": 5}}
    _assert_tree_equal(params, PARAMS)
    config, params = load_for_inference(str(tmp_path / "run" / "checkpoints" / "3"), use_ema=False)
    assert config == {"train": {"steps": 3}}
    _assert_tree_equal(params, PARAMS)
    assert all(len(leaf.devices()) == 1 for leaf in jax.tree_util.tree_leaves(params))
    _, params = load_for_inference(str(tmp_path / "run" / "checkpoints" / "3"))
    _assert_tree_equal(params, jax.tree_util.tree_map(lambda x: x * 0.5, PARAMS))

    export = export_params(str(tmp_path / "export"), params, config)
    loaded_config, loaded = load_for_inference(export)
    assert loaded_config == config
    _assert_tree_equal(loaded, params)
    _assert_tree_equal(load_params(export), params)


def test_inference_loading_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or exported params"):
        load_for_inference(str(tmp_path))
    export_params(str(tmp_path / "export"), PARAMS)  # no config
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_for_inference(str(tmp_path / "export"))
