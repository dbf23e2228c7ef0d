"""DDIM against `diffusers.DDIMScheduler` (needs the `torch` extra; skipped without it)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jax_i2v.diffusion.ddim import DDIMConfig, ddim_step, ddim_timesteps, previous_timestep  # noqa: E402


def _pair(**overrides):
    config = DDIMConfig(**overrides)
    reference = diffusers.DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        steps_offset=config.steps_offset,
        timestep_spacing=config.timestep_spacing,
        set_alpha_to_one=config.set_alpha_to_one,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
    )
    return config, reference


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_alphas_cumprod(beta_schedule):
    config, reference = _pair(beta_schedule=beta_schedule)
    np.testing.assert_allclose(config.schedule().alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_for_every_step_count(spacing):
    config, reference = _pair(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    for steps in list(range(1, 101)) + [250, 333, 999, 1000]:
        reference.set_timesteps(steps)
        np.testing.assert_array_equal(ddim_timesteps(steps, config), reference.timesteps.numpy(), err_msg=f"{steps} steps")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_steps_match(prediction_type, eta, set_alpha_to_one):
    config, reference = _pair(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one)
    schedule = config.schedule()
    steps = 50
    reference.set_timesteps(steps)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)  # torch layout (B, C, F, H, W)
    for t in ddim_timesteps(steps, config)[[0, 10, 25, 48, 49]]:
        output = rng.standard_normal(sample.shape).astype(np.float32)
        noise = rng.standard_normal(sample.shape).astype(np.float32)
        want = reference.step(
            torch.from_numpy(output), int(t), torch.from_numpy(sample), eta=eta, variance_noise=torch.from_numpy(noise)
        )
        got, x0 = ddim_step(schedule, config, output, t, previous_timestep(t, steps, config), sample, eta, noise)
        np.testing.assert_allclose(got, want.prev_sample.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"t={t}")
        np.testing.assert_allclose(x0, want.pred_original_sample.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"t={t}")
