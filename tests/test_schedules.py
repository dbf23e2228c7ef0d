import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.diffusion.schedules import add_noise, make_schedule, pyoco_mixed_noise, split_prediction, velocity


def test_linear_schedule_values_from_the_spec():
    schedule = make_schedule("linear", 0.00085, 0.012, 1000)
    assert schedule.num_train_timesteps == 1000
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [0.00085, 0.012], rtol=1e-6)
    # Spec section 2 (verified on the reference): alpha_bar_850 = 0.00842, alpha_bar_999 = 0.00158.
    assert round(float(schedule.alphas_cumprod[850]), 5) == 0.00842
    assert round(float(schedule.alphas_cumprod[999]), 5) == 0.00158


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = np.asarray(make_schedule("scaled_linear").betas, np.float64)
    np.testing.assert_allclose(np.diff(np.sqrt(betas)), np.diff(np.sqrt(betas))[0], rtol=1e-3)
    assert betas[0] == pytest.approx(0.00085, rel=1e-5) and betas[-1] == pytest.approx(0.012, rel=1e-5)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_zero_terminal_snr_keeps_the_first_step_and_ends_in_pure_noise(beta_schedule):
    plain = np.sqrt(np.asarray(make_schedule(beta_schedule).alphas_cumprod, np.float64))
    rescaled = np.sqrt(np.asarray(make_schedule(beta_schedule, rescale_betas_zero_snr=True).alphas_cumprod, np.float64))
    assert rescaled[-1] == 0.0 and rescaled[0] == pytest.approx(plain[0], rel=1e-6)
    # Lin et al.: sqrt(alpha_bar) is shifted and scaled, an affine map of the original.
    slope = plain[0] / (plain[0] - plain[-1])
    np.testing.assert_allclose(rescaled, (plain - plain[-1]) * slope, atol=2e-6)


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ValueError, match="v_prediction"):
        DDIMConfig(rescale_betas_zero_snr=True, prediction_type="epsilon")


@pytest.mark.parametrize("kwargs", [dict(beta_schedule="cosine"), dict(beta_start=0.1, beta_end=0.01), dict(num_train_timesteps=1)])
def test_bad_schedules_raise(kwargs):
    with pytest.raises(ValueError):
        make_schedule(**kwargs)


def test_add_noise_uses_each_videos_timestep():
    schedule = make_schedule()
    clean = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 1))
    noise = jax.random.normal(jax.random.key(1), clean.shape)
    t = jnp.array([0, 500, 999])
    noisy = add_noise(schedule, clean, noise, t)
    for i in range(3):
        a = float(schedule.alphas_cumprod[t[i]])
        np.testing.assert_allclose(noisy[i], np.sqrt(a) * clean[i] + np.sqrt(1 - a) * noise[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_split_prediction_recovers_clean_and_noise(prediction_type):
    schedule = make_schedule()
    clean = jax.random.normal(jax.random.key(0), (4, 3, 4, 4, 2))
    noise = jax.random.normal(jax.random.key(1), clean.shape)
    t = jnp.array([1, 250, 700, 999])
    noisy = add_noise(schedule, clean, noise, t)
    output = noise if prediction_type == "epsilon" else velocity(schedule, clean, noise, t)
    x0, eps = split_prediction(schedule, noisy, output, t, prediction_type)
    np.testing.assert_allclose(eps, noise, atol=2e-4)
    # x0 = (x - sigma eps) / signal amplifies float error by 1/signal (25x at t = 999).
    np.testing.assert_allclose(x0, clean, atol=5e-3 if prediction_type == "epsilon" else 2e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_pyoco_noise_has_unit_variance_and_the_stated_frame_correlation(alpha):
    b, f, h, w, c = 512, 4, 8, 8, 4
    noise = np.asarray(pyoco_mixed_noise(jax.random.key(3), (b, f, h, w, c), alpha), np.float64)
    n = b * h * w * c  # samples per frame
    variance = noise.reshape(b, f, -1).transpose(1, 0, 2).reshape(f, -1).var(axis=1)
    # Var of a sample variance of N(0,1) is 2 / n: allow 5 standard errors.
    np.testing.assert_allclose(variance, 1.0, atol=5 * np.sqrt(2.0 / n))
    expected = alpha**2 / (1 + alpha**2)
    per_frame = noise.transpose(1, 0, 2, 3, 4).reshape(f, -1)
    for i in range(f - 1):
        corr = np.corrcoef(per_frame[i], per_frame[i + 1])[0, 1]
        # Standard error of a sample correlation is about (1 - rho^2) / sqrt(n).
        assert abs(corr - expected) < 5 * (1 - expected**2) / np.sqrt(n) + 1e-3, (i, corr, expected)


def test_pyoco_noise_shares_one_component_per_video():
    """Different videos are independent even with a strong shared component."""
    noise = np.asarray(pyoco_mixed_noise(jax.random.key(0), (2, 8, 16, 16, 4), 10.0), np.float64)
    assert np.corrcoef(noise[0, 0].ravel(), noise[1, 0].ravel())[0, 1] < 0.1
    assert np.corrcoef(noise[0, 0].ravel(), noise[0, 7].ravel())[0, 1] > 0.95
