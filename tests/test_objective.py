import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.diffusion.objective import ObjectiveConfig, diffusion_loss, prepare_example
from jax_i2v.diffusion.schedules import add_noise, make_schedule, signal_and_noise_scales

SCHEDULE = make_schedule()
B, F, H, W, C, L, D = 4, 5, 4, 4, 2, 3, 6


def _batch(key, b=B):
    k1, k2 = jax.random.split(key)
    return {
        "latents": jax.random.normal(k1, (b, F, H, W, C)),
        "text": jax.random.normal(k2, (b, L, D)) + 5.0,
        "frame_stride": jnp.arange(b, dtype=jnp.float32) % 5 + 1,
    }


NULL_TEXT = jnp.zeros((L, D))


def _scaling_model(params, sample, timesteps, text, first, stride):
    """Ignores the conditioning frame: the first frame can reach the loss only as a target."""
    return params * sample


@pytest.mark.parametrize("condition_on_first_frame", [True, False])
def test_first_frame_enters_the_loss_only_when_it_is_denoised(condition_on_first_frame):
    config = ObjectiveConfig(condition_on_first_frame=condition_on_first_frame)
    batch = _batch(jax.random.key(0))

    def loss_of_latents(latents):
        return diffusion_loss(_scaling_model, 0.5, {**batch, "latents": latents}, NULL_TEXT, jax.random.key(1), SCHEDULE, config)[0]

    grad = jax.grad(loss_of_latents)(batch["latents"])
    per_frame = np.abs(np.asarray(grad)).reshape(B, F, -1).max(axis=(0, 2))
    if condition_on_first_frame:
        assert per_frame[0] == 0.0
    else:
        assert per_frame[0] > 0.0
    assert (per_frame[1:] > 0.0).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("condition_on_first_frame", [True, False])
def test_an_oracle_model_has_zero_loss(prediction_type, condition_on_first_frame):
    """The model that knows the clean video predicts the target exactly: checks frame alignment and targets."""
    config = ObjectiveConfig(prediction_type=prediction_type, condition_on_first_frame=condition_on_first_frame)
    batch = _batch(jax.random.key(2))
    clean = batch["latents"][:, 1:] if condition_on_first_frame else batch["latents"]

    def oracle(params, sample, timesteps, text, first, stride):
        signal, sigma = signal_and_noise_scales(SCHEDULE, timesteps, sample)
        eps = (sample - signal * clean) / sigma
        return eps if prediction_type == "epsilon" else signal * eps - sigma * clean

    loss, _ = diffusion_loss(oracle, None, batch, NULL_TEXT, jax.random.key(3), SCHEDULE, config)
    assert float(loss) < 1e-8
    wrong = {**batch, "latents": jnp.roll(batch["latents"], 1, axis=1)}  # frames misaligned
    assert float(diffusion_loss(oracle, None, wrong, NULL_TEXT, jax.random.key(3), SCHEDULE, config)[0]) > 0.1


def test_dropout_rates_independence_and_replacements():
    n = 20000
    config = ObjectiveConfig(first_frame_dropout=0.1, text_dropout=0.1)
    batch = {
        "latents": jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None, None], (n, 2, 1, 1, 1)),
        "text": jnp.ones((n, 1, 1)),
    }
    example = prepare_example(batch, jnp.zeros((1, 1)), jax.random.key(4), SCHEDULE, config)
    first, text = np.asarray(example.first_frame_dropped), np.asarray(example.text_dropped)
    se = np.sqrt(0.1 * 0.9 / n)
    assert abs(first.mean() - 0.1) < 5 * se and abs(text.mean() - 0.1) < 5 * se
    assert abs((first & text).mean() - 0.01) < 5 * np.sqrt(0.01 * 0.99 / n)  # independent draws
    # Dropped conditions are replaced by frame 0 noised at the video's own t, and by the empty caption.
    noisy0 = add_noise(SCHEDULE, batch["latents"][:, :1], example.noise[:, :1], example.timesteps)
    np.testing.assert_allclose(np.asarray(example.first_frame)[first], np.asarray(noisy0)[first], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(example.first_frame)[~first], np.asarray(batch["latents"][:, :1])[~first])
    np.testing.assert_array_equal(np.asarray(example.text)[:, 0, 0], np.where(text, 0.0, 1.0))
    # t ~ U{0..999}: mean 499.5, sd 288.7.
    t = np.asarray(example.timesteps)
    assert t.min() >= 0 and t.max() <= 999 and abs(t.mean() - 499.5) < 5 * 288.7 / np.sqrt(n)
    np.testing.assert_array_equal(example.frame_stride, 1.0)


def test_noisy_frames_and_targets_share_the_videos_timestep():
    batch = _batch(jax.random.key(5))
    example = prepare_example(batch, NULL_TEXT, jax.random.key(6), SCHEDULE, ObjectiveConfig())
    expected = add_noise(SCHEDULE, batch["latents"], example.noise, example.timesteps)[:, 1:]
    np.testing.assert_allclose(example.sample, expected, rtol=1e-6)
    np.testing.assert_array_equal(example.target, example.noise[:, 1:])
    np.testing.assert_array_equal(example.frame_stride, batch["frame_stride"])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_scales_each_videos_mse(prediction_type):
    batch = _batch(jax.random.key(7), b=64)
    plain = ObjectiveConfig(prediction_type=prediction_type)
    weighted = ObjectiveConfig(prediction_type=prediction_type, snr_gamma=5.0)
    _, example = diffusion_loss(_scaling_model, 0.5, batch, NULL_TEXT, jax.random.key(8), SCHEDULE, plain)
    per_video = np.mean(np.square(0.5 * np.asarray(example.sample) - np.asarray(example.target)), axis=(1, 2, 3, 4))
    alpha_bar = np.asarray(SCHEDULE.alphas_cumprod)[np.asarray(example.timesteps)].astype(np.float64)
    snr = alpha_bar / (1 - alpha_bar)
    expected = np.minimum(snr, 5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    loss, same = diffusion_loss(_scaling_model, 0.5, batch, NULL_TEXT, jax.random.key(8), SCHEDULE, weighted)
    np.testing.assert_array_equal(same.timesteps, example.timesteps)
    np.testing.assert_allclose(float(loss), np.mean(expected * per_video), rtol=1e-5)
    # Low-noise steps (SNR > gamma) are down-weighted; for epsilon, high-noise steps keep weight 1.
    assert expected[snr > 5.0].max() < 1.0
    if prediction_type == "epsilon":
        np.testing.assert_allclose(expected[snr <= 5.0], 1.0)


def test_timestep_bias_draws_the_noisiest_portion_more_often():
    from jax_i2v.diffusion.objective import sample_timesteps

    n = 40000
    biased = np.asarray(
        sample_timesteps(jax.random.key(9), n, 1000, ObjectiveConfig(timestep_bias_multiplier=3.0, timestep_bias_portion=0.3))
    )
    assert biased.min() >= 0 and biased.max() <= 999
    expected = 0.3 * 3 / (0.7 + 0.3 * 3)  # share of t >= 700
    assert abs((biased >= 700).mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    # Uniform within each part.
    assert abs(biased[biased >= 700].mean() - 849.5) < 3 and abs(biased[biased < 700].mean() - 349.5) < 5
    uniform = np.asarray(sample_timesteps(jax.random.key(9), n, 1000, ObjectiveConfig()))
    assert abs((uniform >= 700).mean() - 0.3) < 5 * np.sqrt(0.21 / n)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prediction_type="sample"),
        dict(text_dropout=1.5),
        dict(noise_alpha=-1.0),
        dict(snr_gamma=0.0),
        dict(timestep_bias_multiplier=0.0),
        dict(timestep_bias_portion=1.5),
    ],
)
def test_bad_objective_settings_raise(kwargs):
    with pytest.raises(ValueError):
        ObjectiveConfig(**kwargs)
