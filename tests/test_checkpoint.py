import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.train.checkpoint import Checkpointer, export_params, load_params
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


def test_params_only_export(tmp_path):
    path = export_params(str(tmp_path / "export"), PARAMS)
    loaded = load_params(path)
    np.testing.assert_array_equal(loaded["proj"]["kernel"], PARAMS["proj"]["kernel"])
