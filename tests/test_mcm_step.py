"""The MCM train step on the micro UNet: what it trains, and one step on 8 devices equals one on 1.

Batches are raw (uint8 pixels and host-side caption embeddings, as a "hashed" teacher's), encoded
in the step by the micro config's parameter-free codec."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jax_i2v.config_utils import latent_codec, load_config, unet_config
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.distill.backbone import ViT, ViTConfig
from jax_i2v.distill.step import MCMConfig, init_state, make_mcm_step, make_models, mcm_state_shardings
from jax_i2v.models.unet import build_unet, random_params
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.parallel.partitioning import params_shardings
from jax_i2v.train.encoders import FrozenEncoders

ROOT = pathlib.Path(__file__).resolve().parents[1]
B = 8  # divisible by the 8-device mesh


@pytest.fixture(scope="module")
def setup():
    micro = load_config(str(ROOT / "configs" / "micro.py"))
    unet = build_unet(unet_config(micro))
    teacher = random_params(unet, 0)
    codec = latent_codec(micro)
    backbone = ViT(ViTConfig(image_size=16, patch_size=4, width=32, depth=2, heads=2, hooks=(0, 1)))
    backbone_params = backbone.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
    config = MCMConfig(lora_rank=4, lora_alpha=4.0, mixed_trajectory=0.5, guidance_min=1.0, guidance_max=3.0)
    schedule = make_schedule(**micro.schedule.to_dict())
    models = make_models(unet, schedule, micro.objective.prediction_type, FrozenEncoders(codec), backbone, config)
    # SGD: Adam's first steps are ~lr * sign(g), which float-level differences between meshes flip
    # for gradients near zero; SGD keeps the comparison about the step's maths.
    models = dataclasses.replace(models, gen_optimizer=optax.sgd(0.05), disc_optimizer=optax.sgd(0.05))
    rng = np.random.default_rng(0)
    batch = {
        "video": rng.integers(0, 256, (B, 4, 16, 16, 3), dtype=np.uint8),
        "text": rng.standard_normal((B, 6, 32)).astype(np.float32),
        "frame_stride": np.ones((B,), np.float32),
        "real_images": rng.integers(0, 256, (B * config.disc_frames, 16, 16, 3), dtype=np.uint8),
        "real_text": rng.standard_normal((B * config.disc_frames, 6, 32)).astype(np.float32),
    }
    return models, config, teacher, backbone_params, batch


def _run(setup, mesh, steps=2):
    models, config, teacher, backbone_params, batch = setup
    state = init_state(jax.random.key(0), teacher, models, config, (4, 8, 8, 12), batch["text"].shape[-1])
    sharding = mcm_state_shardings(state, models, mesh)
    teacher_sharding, backbone_sharding = params_shardings(teacher, mesh), params_shardings(backbone_params, mesh)
    step = make_mcm_step(models, config, mesh, sharding, teacher_sharding, backbone_sharding, {})
    initial = jax.device_get(state)
    state = jax.device_put(state, sharding)
    teacher, backbone_params = jax.device_put(teacher, teacher_sharding), jax.device_put(backbone_params, backbone_sharding)
    null_text = np.zeros((6, 32), np.float32)
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch, teacher, backbone_params, {}, null_text, jax.random.key(7))
        history.append(jax.device_get(metrics))
    trained = jax.device_get(state)
    # Then one step on a poisoned batch, which the step must skip.
    poisoned = {**batch, "text": np.array(batch["text"])}
    poisoned["text"][0, 1, 0] = np.nan
    after_nan, nan_metrics = step(state, poisoned, teacher, backbone_params, {}, null_text, jax.random.key(7))
    return initial, trained, history, (jax.device_get(after_nan), jax.device_get(nan_metrics))


@pytest.fixture(scope="module")
def single(setup):
    return _run(setup, create_mesh({"data": 1}, devices=jax.devices()[:1]))


@pytest.mark.slow
def test_one_step_trains_student_head_and_discriminator(single):
    initial, state, history, _ = single
    assert int(state.step) == 2
    for metrics in history:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    name = next(iter(initial.student))
    assert not np.any(initial.student[name]["b"]) and np.any(state.student[name]["b"])  # LoRA B leaves zero
    moved = lambda a, b: any(not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert moved(initial.head, state.head) and moved(initial.head_ema, state.head_ema) and moved(initial.disc, state.disc)
    assert moved(initial.disc_stats, state.disc_stats)  # spectral-norm power iterations
    # The head's EMA trails the head: 0.95 ema + 0.05 head each step.
    out_kernel = lambda tree: np.asarray(tree["out"]["kernel"])
    assert np.abs(out_kernel(state.head_ema)).max() < np.abs(out_kernel(state.head)).max()


@pytest.mark.slow
def test_a_nonfinite_step_changes_nothing_but_the_step(single):
    _, trained, history, (after_nan, nan_metrics) = single
    assert [m["nonfinite"] for m in history] == [0.0] * len(history)
    assert nan_metrics["nonfinite"] == 1.0 and not np.isfinite(nan_metrics["g_loss"])
    assert int(after_nan.step) == int(trained.step) + 1
    for field in (
        "student",
        "target",
        "head",
        "head_ema",
        "disc",
        "disc_stats",
        "gen_opt_state",
        "disc_opt_state",
        "gp_weight",
        "gp_quiet_steps",
    ):
        for a, b in zip(jax.tree_util.tree_leaves(getattr(after_nan, field)), jax.tree_util.tree_leaves(getattr(trained, field))):
            np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.slow
def test_eight_devices_equal_one(setup, single):
    _, expected, expected_history, _ = single
    _, state, history, _ = _run(setup, create_mesh({"data": 4, "fsdp": 2}))
    for a, b in zip(history, expected_history):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=1e-5, err_msg=key)
    flat, flat_expected = traverse_util.flatten_dict(state.student), traverse_util.flatten_dict(expected.student)
    for path in flat_expected:
        np.testing.assert_allclose(flat[path], flat_expected[path], rtol=2e-4, atol=1e-5, err_msg=str(path))
    for a, b in zip(jax.tree_util.tree_leaves(state.disc), jax.tree_util.tree_leaves(expected.disc)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
