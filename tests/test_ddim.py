import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.diffusion import progress
from jax_i2v.diffusion.ddim import DDIMConfig, ddim_sample, ddim_step, ddim_timesteps, padded_timesteps
from jax_i2v.diffusion.guidance import Conditioning, guidance_mode, guided_prediction

CONFIG = DDIMConfig()
SCHEDULE = CONFIG.schedule()
ALPHAS = np.asarray(SCHEDULE.alphas_cumprod, np.float64)


def test_fifty_leading_steps_are_981_to_1():
    np.testing.assert_array_equal(ddim_timesteps(50), np.arange(981, 0, -20))


@pytest.mark.parametrize(
    "spacing,steps,expected",
    [
        ("leading", 4, [751, 501, 251, 1]),
        ("trailing", 4, [999, 749, 499, 249]),
        ("linspace", 4, [999, 666, 333, 0]),
        ("leading", 1, [1]),
        ("trailing", 1, [999]),
        ("linspace", 1, [0]),
    ],
)
def test_spacings(spacing, steps, expected):
    np.testing.assert_array_equal(ddim_timesteps(steps, DDIMConfig(timestep_spacing=spacing)), expected)


@pytest.mark.parametrize("steps", [0, 1001])
def test_step_count_out_of_range_raises(steps):
    with pytest.raises(ValueError):
        ddim_timesteps(steps)


def _closed_form(x, eps, t, t_prev, eta, z):
    """DDIM eq. 12 in float64, written out independently of the library."""
    a_t = ALPHAS[t]
    a_prev = ALPHAS[t_prev] if t_prev >= 0 else 1.0
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z


@pytest.mark.parametrize("t,t_prev", [(981, 961), (501, 481), (21, 1), (1, -19)])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_one_step_equals_the_closed_form(t, t_prev, eta):
    rng = np.random.default_rng(t)
    x, eps, z = (rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32) for _ in range(3))
    got, _ = ddim_step(SCHEDULE, CONFIG, eps, t, t_prev, x, eta, z)
    want = _closed_form(x.astype(np.float64), eps.astype(np.float64), t, t_prev, eta, z.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_zero_noise_prediction_scales_the_input_by_one_over_sqrt_alpha_bar():
    """With eps = 0 and eta = 0 each step multiplies by sqrt(a_prev / a_t); the product telescopes
    to 1 / sqrt(a_981) since the final alpha_bar is 1."""
    x_t = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, 2))
    out = ddim_sample(lambda x, t: jnp.zeros_like(x), x_t, jax.random.key(1), padded_timesteps(50), 50, SCHEDULE, CONFIG)
    np.testing.assert_allclose(out, np.asarray(x_t) / np.sqrt(ALPHAS[981]), rtol=1e-4)


def test_exact_noise_prediction_recovers_the_clean_sample():
    """A model that knows x_0 predicts eps exactly; deterministic DDIM then lands on x_0."""
    clean = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 2))
    x_t = jax.random.normal(jax.random.key(1), clean.shape)
    alphas = SCHEDULE.alphas_cumprod

    def oracle(x, t):
        return (x - jnp.sqrt(alphas[t]) * clean) / jnp.sqrt(1 - alphas[t])

    out = ddim_sample(oracle, x_t, jax.random.key(2), padded_timesteps(10), 10, SCHEDULE, CONFIG)
    np.testing.assert_allclose(out, clean, atol=1e-4)


def test_one_compilation_for_every_step_count_and_progress_reports_each_step():
    traces, seen = [], []

    @jax.jit
    def run(x, timesteps, num_steps, eta):
        traces.append(num_steps)
        zero_model = lambda x, t: jnp.zeros_like(x)
        return ddim_sample(zero_model, x, jax.random.key(0), timesteps, num_steps, SCHEDULE, CONFIG, eta, True)

    x = jnp.ones((1, 2, 2, 2, 1))
    with progress.on_step(lambda i, n: seen.append((i, n))):
        for steps in (3, 7):
            out = jax.block_until_ready(run(x, padded_timesteps(steps), steps, 0.0))
            first_t = ddim_timesteps(steps)[0]
            np.testing.assert_allclose(out, 1 / np.sqrt(ALPHAS[first_t]), rtol=1e-4)
        jax.effects_barrier()
    assert len(traces) == 1
    assert sorted(seen) == sorted([(i, 3) for i in range(3)] + [(i, 7) for i in range(7)])


def test_guidance_mode_rule():
    assert guidance_mode(7.5, 1.0) == "text"
    assert guidance_mode(1.0, 1.0) == "none"
    assert guidance_mode(7.5, 1.5) == "text_image"
    assert guidance_mode(1.0, 2.0) == "text_image"


def _marker_model(sample, timesteps, text, first, stride):
    """Output = text marker + 0.01 * first-frame marker, so each branch is identifiable."""
    marker = text.mean(axis=(1, 2)) + 0.01 * first.mean(axis=(1, 2, 3, 4))
    return jnp.zeros_like(sample) + marker[:, None, None, None, None]


@pytest.mark.parametrize(
    "mode,expected",
    [
        # caption 1, empty caption 0, clean first frame 10, noisy first frame 100
        ("none", 1.1),
        ("text", 0.1 + 7.5 * (1.1 - 0.1)),
        ("text_image", 1.0 + 1.5 * (0.1 - 1.0) + 7.5 * (1.1 - 0.1)),
    ],
)
def test_guidance_combinations(mode, expected):
    b = 2
    cond = Conditioning(
        text=jnp.ones((b, 3, 4)),
        null_text=jnp.zeros((b, 3, 4)),
        frame_stride=jnp.ones((b,)),
        first_frame=jnp.full((b, 1, 2, 2, 1), 10.0),
        noisy_first_frame=jnp.full((b, 1, 2, 2, 1), 100.0),
    )
    out = guided_prediction(_marker_model, jnp.zeros((b, 3, 2, 2, 1)), 500, cond, mode, 7.5, 1.5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_unsupported_diffusers_settings_raise():
    assert DDIMConfig.from_diffusers({"_class_name": "DDIMScheduler", "steps_offset": 1}).steps_offset == 1
    with pytest.raises(ValueError, match="thresholding"):
        DDIMConfig.from_diffusers({"thresholding": True})
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMConfig(timestep_spacing="karras")
