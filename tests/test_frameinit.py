import numpy as np
import pytest

from jax_i2v.diffusion.frameinit import FrameInitConfig, frame_init, frequency_mix, low_pass_filter
from jax_i2v.diffusion.schedules import add_noise, make_schedule

SCHEDULE = make_schedule("linear", 0.00085, 0.012, 1000)


@pytest.mark.parametrize("case", range(5))
def test_matches_the_reference(frameinit_cases, case):
    c = frameinit_cases[case]
    config = FrameInitConfig(c["filter_type"], c["d_s"], c["d_t"], c["order"], c["noise_level"])
    frames, height, width = c["noise"].shape[1:4]
    mask = low_pass_filter(frames, height, width, config)
    np.testing.assert_allclose(np.broadcast_to(mask, c["filter"].shape), c["filter"], atol=1e-6, rtol=0)
    static = np.repeat(c["first"], frames, axis=1)
    mixed = frame_init(SCHEDULE, static, c["noise"], mask, config.timestep(1000))
    np.testing.assert_allclose(np.asarray(mixed), c["mixed"], atol=1e-5, rtol=0)


def test_fixture_covers_every_filter_type(frameinit_cases):
    assert {c["filter_type"] for c in frameinit_cases} == {"gaussian", "butterworth", "ideal", "box"}


def test_release_gaussian_values_from_the_spec():
    """Spec 3.3 (verified on the reference): DC 1.0, one temporal bin 0.882, |f_s| = 0.5 -> 0.135, mean 0.031."""
    mask = low_pass_filter(16, 32, 32, FrameInitConfig())
    assert mask[8, 16, 16] == 1.0
    assert round(float(mask[9, 16, 16]), 3) == 0.882
    assert round(float(mask[8, 16, 24]), 3) == 0.135
    assert round(float(mask.mean()), 3) == 0.031


def test_all_pass_and_all_stop_masks():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((2, 6, 8, 10, 3)).astype(np.float32)
    high = rng.standard_normal(low.shape).astype(np.float32)
    np.testing.assert_allclose(frequency_mix(low, high, np.ones((6, 8, 10))), low, atol=1e-5)
    np.testing.assert_allclose(frequency_mix(low, high, np.zeros((6, 8, 10))), high, atol=1e-5)


def test_frame_init_keeps_the_static_videos_mean():
    """The DC bin passes the noised static video: the video mean is sqrt(a_t) * static mean + sqrt(1-a_t) * noise mean."""
    rng = np.random.default_rng(1)
    static = np.repeat(rng.standard_normal((1, 1, 8, 8, 4)).astype(np.float32) + 2.0, 16, axis=1)
    noise = rng.standard_normal(static.shape).astype(np.float32)
    mixed = np.asarray(frame_init(SCHEDULE, static, noise, low_pass_filter(16, 8, 8), 850))
    expected = np.asarray(add_noise(SCHEDULE, static, noise, 850)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(filter_type="median"), dict(d_s=-1.0), dict(order=0), dict(noise_level=1001)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        FrameInitConfig(**kwargs)


def test_zero_cutoff_disables_the_mask():
    assert not low_pass_filter(4, 4, 4, FrameInitConfig(d_s=0.0)).any()
