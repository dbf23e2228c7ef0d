"""MCM's consistency-distillation maths, motion representations and LoRA transform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_i2v.diffusion.lcm import boundary_scalings, consistency_output, lcm_timesteps, solver_timesteps
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.distill import lora
from jax_i2v.distill.consistency import consistency_loss, ddim_solver_step, lcm_guidance, solver_previous_timesteps
from jax_i2v.distill.motion import SpatialHead, frequency_split, motion_representation


def test_boundary_scalings_at_the_spec_values():
    c_skip, c_out = boundary_scalings(jnp.array([0, 19, 999]), timestep_scaling=4.0)
    np.testing.assert_allclose(c_skip, [1.0, 0.25 / (76**2 + 0.25), 0.25 / (3996**2 + 0.25)], rtol=1e-6)
    np.testing.assert_allclose(c_out, [0.0, 76 / np.sqrt(76**2 + 0.25), 3996 / np.sqrt(3996**2 + 0.25)], rtol=1e-6)
    assert abs(float(c_skip[1]) - 4.3e-5) < 1e-6 and abs(float(c_out[1]) - 0.99998) < 1e-5
    x, x0 = jnp.ones((2, 3, 4, 4, 1)), jnp.zeros((2, 3, 4, 4, 1))
    out = consistency_output(x, x0, jnp.array([0, 999]))
    assert float(out[0].min()) == 1.0 and float(out[1].max()) < 1e-6  # t = 0 returns the input itself


@pytest.mark.parametrize(
    "steps, expected",
    [(1, [999]), (2, [999, 499]), (4, [999, 759, 499, 259]), (8, [999, 879, 759, 639, 499, 379, 259, 139])],
)
def test_lcm_timestep_tables(steps, expected):
    assert lcm_timesteps(steps).tolist() == expected


def test_lcm_timesteps_and_scalings_equal_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.LCMScheduler(timestep_scaling=4.0, original_inference_steps=50)
    for steps in (1, 2, 3, 4, 6, 8):
        scheduler.set_timesteps(steps)
        assert lcm_timesteps(steps).tolist() == scheduler.timesteps.tolist()
    for t in (0, 19, 259, 999):
        reference = scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        np.testing.assert_allclose(boundary_scalings(t), [float(v) for v in reference], rtol=1e-6, atol=1e-9)


def test_solver_grid_and_step():
    grid = solver_timesteps()
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999 and len(grid) == 50
    assert solver_previous_timesteps()[:2].tolist() == [0, 19] and solver_previous_timesteps()[-1] == 979
    schedule = make_schedule("scaled_linear", 0.00085, 0.012, 1000)
    x0, eps = jnp.full((2, 1, 1, 1, 1), 2.0), jnp.full((2, 1, 1, 1, 1), -1.0)
    out = ddim_solver_step(schedule, x0, eps, jnp.array([0, 49]))
    for row, previous in enumerate([0, 979]):
        a = float(schedule.alphas_cumprod[previous])
        np.testing.assert_allclose(out[row].ravel(), [2 * np.sqrt(a) - np.sqrt(1 - a)], rtol=1e-6)


def test_lcm_guidance_is_cfg_at_one_plus_w():
    c, u = jnp.full((2, 3), 2.0), jnp.full((2, 3), 1.0)
    np.testing.assert_allclose(lcm_guidance(c, u, jnp.array([0.0, 5.0])), [[2.0] * 3, [7.0] * 3])


def test_pseudo_huber():
    a = jnp.array([0.0, 3.0, -4.0])
    b = jnp.zeros(3)
    c = 0.001
    expected = np.mean(np.sqrt(np.array([0.0, 9.0, 16.0]) + c**2) - c)
    np.testing.assert_allclose(consistency_loss(a, b, "huber", c), expected, rtol=1e-6)
    assert float(consistency_loss(b, b)) == 0.0
    np.testing.assert_allclose(consistency_loss(a, b, "l2"), 25.0 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        consistency_loss(a, b, "lpips")


def test_frequency_parts_reconstruct_the_video_and_split_it():
    video = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 4))
    low, high = frequency_split(video)
    np.testing.assert_allclose(low + high, video, atol=1e-5)
    np.testing.assert_allclose(motion_representation(video, "freql") + motion_representation(video, "freqh"), video, atol=1e-5)
    constant = jnp.ones((1, 8, 8, 8, 1))
    np.testing.assert_allclose(frequency_split(constant)[0], constant, atol=1e-5)  # DC is all low


def test_temporal_difference_of_a_static_video_is_zero():
    frame = jax.random.normal(jax.random.key(1), (2, 1, 6, 6, 4))
    static = jnp.repeat(frame, 5, axis=1)
    diff = motion_representation(static, "diff")
    assert diff.shape == (2, 4, 6, 6, 4) and float(jnp.abs(diff).max()) == 0.0
    moving = static.at[:, 3].add(1.0)
    np.testing.assert_allclose(jnp.abs(motion_representation(moving, "diff")).max(), 1.0, rtol=1e-6)


def test_spatial_head_is_the_identity_at_init_and_per_frame():
    video = jax.random.normal(jax.random.key(2), (2, 3, 4, 4, 4))
    head = SpatialHead()
    params = head.init(jax.random.key(0), video)["params"]
    np.testing.assert_array_equal(motion_representation(video, "learn", head, params), video)
    trained = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    out = head.apply({"params": trained}, video)
    assert not np.allclose(out, video)
    # frames do not mix: changing frame 0 leaves frames 1.. unchanged
    other = head.apply({"params": trained}, video.at[:, 0].set(0.0))
    np.testing.assert_allclose(other[:, 1:], out[:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        motion_representation(video, "learn")


def test_zero_lora_deltas_leave_the_teacher_exact(reference_unet, reference_cases, reference_apply):
    _, params = reference_unet
    inputs, _ = reference_cases[0]
    paths = lora.target_paths(params)
    assert paths and not any("conv3ds" in "/".join(p) for p in paths)
    assert any(p[-2] == "to_q" for p in paths) and any(p[-3:-1] == ("net_0", "proj") for p in paths)
    assert any(p[-2] == "conv" and p[-3] == "downsamplers_0" for p in paths)
    assert any("tempo_attns" in "/".join(p) for p in paths)  # temporal attention is adapted
    deltas = lora.init_lora(params, rank=4, rng=jax.random.key(0))
    student = lora.merge(params, deltas)
    teacher_flat, student_flat = traverse_util.flatten_dict(params), traverse_util.flatten_dict(student)
    for path in teacher_flat:
        np.testing.assert_array_equal(student_flat[path], teacher_flat[path])
    np.testing.assert_array_equal(reference_apply(student, **inputs), reference_apply(params, **inputs))
    # A non-zero B moves exactly the adapted kernel by A @ B.
    name = "/".join(paths[0])
    deltas[name]["b"] = jnp.ones_like(deltas[name]["b"])
    moved = traverse_util.flatten_dict(lora.merge(params, deltas, scale=0.5))
    a = np.asarray(deltas[name]["a"])
    np.testing.assert_allclose(moved[paths[0]], teacher_flat[paths[0]] + 0.5 * a.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
