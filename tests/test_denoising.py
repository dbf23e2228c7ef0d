"""Denoising errors by noise level: an oracle scores zero, a model that ignores its input does not."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.diffusion.schedules import make_schedule, signal_and_noise_scales
from jax_i2v.eval.denoising import denoising_errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEDULE = make_schedule()
CLEAN = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 5))
TEXT = jnp.zeros((2, 2, 3))
STRIDE = jnp.ones((2,))


def _oracle(prediction_type):
    """Returns the output that recovers CLEAN exactly from any noisy sample of it."""

    def apply(noisy, t, text, first, stride):
        signal, sigma = signal_and_noise_scales(SCHEDULE, t, noisy)
        if prediction_type == "epsilon":
            return (noisy - signal * CLEAN) / sigma
        return (signal * noisy - CLEAN) / sigma

    return apply


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_an_oracle_denoises_perfectly_at_every_noise_level(prediction_type):
    errors = denoising_errors(
        _oracle(prediction_type), SCHEDULE, prediction_type, CLEAN, None, TEXT, STRIDE, (0, 10, 500, 999), jax.random.key(1)
    )
    assert set(errors) == {0, 10, 500, 999}
    for t, e in errors.items():
        assert e["x0_mse"] < 1e-8 and e["eps_mse"] < 1e-6, (t, e)


def test_a_model_that_predicts_zero_noise_misses_all_of_it():
    errors = denoising_errors(lambda x, *_: jnp.zeros_like(x), SCHEDULE, "epsilon", CLEAN, None, TEXT, STRIDE, (10, 900), jax.random.key(2))
    for t, e in errors.items():
        # Its clean estimate is the noisy sample rescaled: the error is the noise at that level.
        signal, sigma = signal_and_noise_scales(SCHEDULE, t, CLEAN)
        assert 0.5 < e["eps_mse"] < 1.6
        np.testing.assert_allclose(e["x0_mse"], e["eps_mse"] * float(sigma / signal) ** 2, rtol=1e-4)


def test_other_texts_are_scored_on_the_same_noisy_samples():
    def reads_text(noisy, t, text, first, stride):  # the oracle, off by the text's mean
        return _oracle("epsilon")(noisy, t, text, first, stride) + jnp.mean(text)

    other = {"same": TEXT, "shifted": TEXT + 0.5}
    errors = denoising_errors(reads_text, SCHEDULE, "epsilon", CLEAN, None, TEXT, STRIDE, (10, 900), jax.random.key(3), other_texts=other)
    for e in errors.values():
        assert e["x0_mse"] < 1e-8 and e["x0_mse_same"] == e["x0_mse"]
        assert e["x0_mse_shifted"] > 1e-4


def test_timesteps_outside_the_schedule_are_refused():
    with pytest.raises(ValueError, match="outside"):
        denoising_errors(_oracle("epsilon"), SCHEDULE, "epsilon", CLEAN, None, TEXT, STRIDE, (1000,), jax.random.key(0))


@pytest.mark.slow
def test_denoising_profile_cli_on_a_trained_checkpoint(micro_run):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "denoising_profile.py"),
            f"--checkpoint={micro_run}",
            "--num_videos=2",
            "--seed=1",
            "--timesteps=10,999",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert set(result["timesteps"]) == {"10", "999"} and result["static_x0_mse"] > 0
    for e in result["timesteps"].values():
        assert np.isfinite(e["x0_mse"]) and np.isfinite(e["eps_mse"]) and np.isfinite(e["x0_mse_reversed_caption"])
