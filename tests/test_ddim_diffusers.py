"""DDIM against `diffusers.DDIMScheduler` (needs the `torch` extra; skipped without it)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jax_i2v.diffusion.ddim import DDIMConfig, ddim_step, ddim_timesteps, previous_timestep  # noqa: E402


def _pair(**overrides):
    """(our config, the diffusers scheduler built from its exported scheduler_config.json)."""
    config = DDIMConfig(**overrides)
    return config, diffusers.DDIMScheduler.from_config(config.to_diffusers())


def test_scheduler_config_round_trips_through_diffusers():
    config = DDIMConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
    reference = diffusers.DDIMScheduler.from_config(config.to_diffusers())
    assert DDIMConfig.from_diffusers(dict(reference.config)) == config
    pndm = diffusers.PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)  # SD-2.1-base ships one
    assert DDIMConfig.from_diffusers(dict(pndm.config)).beta_schedule == "scaled_linear"
    with pytest.raises(ValueError, match="trained_betas"):
        DDIMConfig.from_diffusers({**config.to_diffusers(), "trained_betas": [0.1] * 1000})


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alphas_cumprod(beta_schedule, zero_snr):
    config, reference = _pair(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr, prediction_type="v_prediction")
    # The rescale divides consecutive float32 products, so its cumprod differs in the last bits.
    np.testing.assert_allclose(
        config.schedule().alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=1e-5 if zero_snr else 2e-6, atol=1e-9
    )


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_for_every_step_count(spacing):
    config, reference = _pair(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    for steps in list(range(1, 101)) + [250, 333, 999, 1000]:
        reference.set_timesteps(steps)
        np.testing.assert_array_equal(ddim_timesteps(steps, config), reference.timesteps.numpy(), err_msg=f"{steps} steps")


@pytest.mark.parametrize("prediction_type,zero_snr", [("epsilon", False), ("v_prediction", False), ("v_prediction", True)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_steps_match(prediction_type, zero_snr, eta, set_alpha_to_one):
    # Trailing spacing starts at t = 999, the pure-noise step of a zero-SNR schedule.
    config, reference = _pair(
        prediction_type=prediction_type,
        set_alpha_to_one=set_alpha_to_one,
        rescale_betas_zero_snr=zero_snr,
        timestep_spacing="trailing" if zero_snr else "leading",
        steps_offset=0 if zero_snr else 1,
    )
    schedule = config.schedule()
    steps = 50
    reference.set_timesteps(steps)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)  # torch layout (B, C, F, H, W)
    for t in ddim_timesteps(steps, config)[[0, 10, 25, 48, 49]]:
        output = rng.standard_normal(sample.shape).astype(np.float32)
        noise = rng.standard_normal(sample.shape).astype(np.float32)
        want = reference.step(torch.from_numpy(output), int(t), torch.from_numpy(sample), eta=eta, variance_noise=torch.from_numpy(noise))
        got, x0 = ddim_step(schedule, config, output, t, previous_timestep(t, steps, config), sample, eta, noise)
        np.testing.assert_allclose(got, want.prev_sample.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"t={t}")
        np.testing.assert_allclose(x0, want.pred_original_sample.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"t={t}")
