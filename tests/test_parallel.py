"""Sharded training on 8 host devices equals single-device training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.config_utils import load_config, unet_config
from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.unet import build_unet, random_params
from jax_i2v.parallel.mesh import create_mesh, resolve_axis_sizes
from jax_i2v.parallel.partitioning import params_logical_axes, params_shardings, rules_from_config
from jax_i2v.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jax_i2v.train.state import state_from_params, state_shardings
from jax_i2v.train.step import StepConfig, make_train_step, micro_batches, unet_loss_fn

# Adam's first update is lr * g / (|g| + eps): with eps = 1e-8 a gradient entry that is zero up to
# float rounding flips sign between reductions orders. A larger eps keeps the update a smooth
# function of the gradient, so the comparison tests the parallelism, not that ill-conditioning.
OPTIM = OptimizerConfig(learning_rate=1e-3, eps=1e-3)
MESHES = {"data8": {"data": 8}, "data2_fsdp4": {"data": 2, "fsdp": 4}, "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}


@pytest.fixture(scope="module")
def setup():
    if jax.device_count() < 8:
        pytest.fail("the sharding tests need 8 host devices (XLA_FLAGS set in conftest.py)")
    # The tiny config cut to two levels of 32 channels: every layer kind, a quarter of the compile time.
    config = dataclasses.replace(
        unet_config(load_config("configs/tiny.py")),
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 2),
    )
    model = build_unet(config)
    params = random_params(model, 0)
    keys = jax.random.split(jax.random.key(0), 2)
    batch = {
        "latents": np.asarray(jax.random.normal(keys[0], (8, 3, 8, 8, 3))),
        "text": np.asarray(jax.random.normal(keys[1], (8, 4, 32))),
        "frame_stride": np.arange(8, dtype=np.float32) % 5 + 1,
    }
    loss_fn = unet_loss_fn(model, make_schedule(), ObjectiveConfig())
    return model, params, batch, loss_fn


def _one_step(setup, mesh, step_config=StepConfig()):
    model, params, batch, loss_fn = setup
    optimizer = make_optimizer(OPTIM)
    state = state_from_params(params, optimizer, mesh, use_ema=step_config.ema_decay > 0)
    sharding = state_shardings(state, optimizer, mesh)
    step = make_train_step(loss_fn, optimizer, learning_rate_schedule(OPTIM), sharding, mesh, config=step_config)
    state, metrics = step(state, batch, np.zeros((4, 32), np.float32), jax.random.key(1))
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device(setup):
    return _one_step(setup, create_mesh({"data": 1}, devices=jax.devices()[:1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_step_equals_single_device(setup, single_device, name):
    mesh = create_mesh(MESHES[name])
    state, metrics = _one_step(setup, mesh)
    ref_state, ref_metrics = single_device
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
    assert int(state.step) == 1
    for got, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # The parameters really are split where the mesh allows it.
    q = state.params["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]["kernel"]
    conv = state.params["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]
    if MESHES[name].get("fsdp", 1) > 1:
        assert conv.sharding.spec[-1] in ("fsdp", ("fsdp", "tensor"))
        assert conv.addressable_shards[0].data.shape[-1] < conv.shape[-1]
    if MESHES[name].get("tensor", 1) > 1:
        assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
        assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2)
    if name == "data8":
        assert conv.sharding.is_fully_replicated


def _toy_step(mesh, step_config, optim=OPTIM):
    """A linear least-squares "model" (Dense-like param names) through the real train step."""
    params = {"proj": {"kernel": np.linspace(-1, 1, 32 * 16, dtype=np.float32).reshape(32, 16)}}

    def loss_fn(params, batch, null_text, rng):
        del null_text, rng  # deterministic, so accumulation must equal the full batch exactly
        return jnp.mean(jnp.square(batch["x"] @ params["proj"]["kernel"] - batch["y"]))

    optimizer = make_optimizer(optim)
    state = state_from_params(params, optimizer, mesh, use_ema=step_config.ema_decay > 0)
    step = make_train_step(
        loss_fn, optimizer, learning_rate_schedule(optim), state_shardings(state, optimizer, mesh), mesh, config=step_config
    )
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((16, 32)).astype(np.float32), "y": rng.standard_normal((16, 16)).astype(np.float32)}
    new_state, metrics = step(state, batch, np.zeros((1,), np.float32), jax.random.key(0))
    return params, new_state, jax.device_get(metrics)


def test_gradient_accumulation_equals_the_full_batch():
    mesh = create_mesh({"data": 2, "fsdp": 4})
    _, full, full_metrics = _toy_step(mesh, StepConfig())
    _, accumulated, metrics = _toy_step(mesh, StepConfig(grad_accum_steps=2))
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(accumulated.params["proj"]["kernel"], full.params["proj"]["kernel"], rtol=1e-5, atol=1e-7)
    assert accumulated.params["proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


def test_micro_batches_keep_the_batch_layout():
    """Each device's rows split between micro-batches: the compiled step moves no batch data."""
    mesh = create_mesh({"data": 8})
    optimizer = make_optimizer(OPTIM)
    params = {"proj": {"kernel": np.zeros((32, 16), np.float32)}}
    state = state_from_params(params, optimizer, mesh)
    loss_fn = lambda p, batch, null_text, rng: jnp.mean(jnp.square(batch["x"] @ p["proj"]["kernel"] - batch["y"]))
    batch = {"x": np.zeros((32, 32), np.float32), "y": np.zeros((32, 16), np.float32)}
    hlo = {}
    for steps in (1, 4):
        step = make_train_step(
            loss_fn,
            optimizer,
            learning_rate_schedule(OPTIM),
            state_shardings(state, optimizer, mesh),
            mesh,
            config=StepConfig(grad_accum_steps=steps),
        )
        hlo[steps] = step.lower(state, batch, np.zeros((1,), np.float32), jax.random.key(0)).compile().as_text()
    moves = ("all-to-all", "collective-permute", "all-gather")
    assert not any(op in hlo[4] for op in moves), [op for op in moves if op in hlo[4]]
    # Gradients are still summed across devices: the property above is not an empty program's.
    assert hlo[4].count("all-reduce(") >= hlo[1].count("all-reduce(") > 0
    micro = micro_batches({"x": jnp.arange(16)}, 4, create_mesh({"data": 2}, devices=jax.devices()[:2]))["x"]
    np.testing.assert_array_equal(micro[1], [1, 5, 9, 13])  # rows 1 and 5 on device 0, 9 and 13 on device 1


def test_ema_follows_the_params():
    params, state, metrics = _toy_step(create_mesh({"data": 8}), StepConfig(ema_decay=0.9))
    assert metrics["lr"] == pytest.approx(OPTIM.learning_rate)
    old, new = params["proj"]["kernel"], np.asarray(state.params["proj"]["kernel"])
    assert not np.allclose(old, new)
    np.testing.assert_allclose(state.ema_params["proj"]["kernel"], 0.9 * old + 0.1 * new, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        StepConfig(grad_accum_steps=0)


def test_every_parameter_has_logical_axes_and_data_parallel_rules_replicate(setup):
    _, params, _, _ = setup
    axes = params_logical_axes(params)
    for leaf_axes, leaf in zip(jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple)), jax.tree_util.tree_leaves(params)):
        assert len(leaf_axes) == leaf.ndim
    mesh = create_mesh({"data": 2, "fsdp": 4})
    pure_dp = rules_from_config({"embed": None, "conv_out": None})
    assert all(s.is_fully_replicated for s in jax.tree_util.tree_leaves(params_shardings(params, mesh, pure_dp)))
    with pytest.raises(ValueError, match="unknown logical axes"):
        rules_from_config({"hidden": "fsdp"})


def test_batch_not_divisible_by_the_data_parallel_size_is_one_clear_error(setup):
    _, params, batch, loss_fn = setup
    mesh = create_mesh({"data": 8})
    optimizer = make_optimizer(OPTIM)
    state = state_from_params(params, optimizer, mesh)
    step = make_train_step(loss_fn, optimizer, learning_rate_schedule(OPTIM), state_shardings(state, optimizer, mesh), mesh)
    small = {k: v[:6] for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"^global batch size 6 is not divisible by data x fsdp = 8"):
        step(state, small, np.zeros((4, 32), np.float32), jax.random.key(0))


def test_mesh_sizes():
    assert resolve_axis_sizes({"data": -1, "fsdp": 2}, 8) == (4, 2, 1)
    for bad in ({"data": -1, "fsdp": -1}, {"data": 3}, {"pipeline": 2}, {"data": 0}):
        with pytest.raises(ValueError):
            resolve_axis_sizes(bad, 8)
    mesh = create_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    hybrid = create_mesh({"fsdp": -1}, dcn={"data": 2})
    assert dict(hybrid.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
