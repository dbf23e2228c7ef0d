"""Shared fixtures: the reference checkpoint and compiled functions are built once per session."""

import os
import pathlib
import tempfile

# Eight host devices for the sharding tests; must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
# CPU only, also in the training subprocesses: with libtpu installed (the `tpu` extra) JAX would
# otherwise probe for a TPU in every process and take libtpu's single-process lock, which the
# ahead-of-time TPU compile test needs (it loads the TPU compiler explicitly).
os.environ["JAX_PLATFORMS"] = "cpu"
# One on-disk compilation cache for the session's processes (pytest workers and the training /
# sampling subprocesses they start): the same micro-model step is compiled once, not per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jax_i2v_test_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax
import numpy as np
import pytest

from jax_i2v.convert import load_unet

FIXTURES = pathlib.Path(os.environ.get("JAX_I2V_FIXTURES", pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
REFERENCE_UNET = FIXTURES / "consisti2v_unet_tiny"


def to_channels_last(x):
    """(B, C, F, H, W) -> (B, F, H, W, C)."""
    return np.transpose(x, (0, 2, 3, 4, 1))


@pytest.fixture(scope="session")
def reference_dir():
    if not (REFERENCE_UNET / "unet" / "config.json").is_file():
        pytest.fail(f"reference fixtures not found at {REFERENCE_UNET} (set JAX_I2V_FIXTURES)")
    return REFERENCE_UNET


@pytest.fixture(scope="session")
def frameinit_cases():
    """FrameInit reference cases: dicts with channels-last first / noise / filter / mixed and the settings."""
    path = FIXTURES / "frameinit.npz"
    if not path.is_file():
        pytest.fail(f"reference fixtures not found at {path} (set JAX_I2V_FIXTURES)")
    data = np.load(path)
    cases = []
    for i in range(5):
        p = f"case{i}_"
        order, d_s, d_t, noise_level = data[p + "params"]
        cases.append(
            dict(
                first=to_channels_last(data[p + "first"]),
                noise=to_channels_last(data[p + "noise"]),
                filter=data[p + "filter"],  # (B, C, T, H, W), the same mask for every b, c
                mixed=to_channels_last(data[p + "mixed"]),
                filter_type=str(data[p + "type"]),
                order=int(order),
                d_s=float(d_s),
                d_t=float(d_t),
                noise_level=int(noise_level),
            )
        )
    return cases


@pytest.fixture(scope="session")
def reference_unet(reference_dir):
    """(model, params) of the reference checkpoint."""
    return load_unet(str(reference_dir / "unet"))


@pytest.fixture(scope="session")
def reference_cases(reference_dir):
    """The two reference cases in channels-last layout: list of (inputs dict, expected output)."""
    io = np.load(reference_dir / "io.npz")
    cases = []
    for i in range(2):
        p = f"case{i}_"
        inputs = dict(
            sample=to_channels_last(io[p + "sample"]),
            timesteps=io[p + "timestep"],
            encoder_hidden_states=io[p + "encoder_hidden_states"],
            first_frame_latents=to_channels_last(io[p + "first_frame_latents"]),
            frame_stride=io[p + "frame_stride"],
        )
        cases.append((inputs, to_channels_last(io[p + "out"])))
    return cases


@pytest.fixture(scope="session")
def reference_apply(reference_unet):
    """Compiled apply of the reference model: f(params, **inputs).

    Scalar timesteps/strides are broadcast to (B,) first, so scalar and per-sample
    calls of one shape share a single compilation.
    """
    model, _ = reference_unet

    @jax.jit
    def compiled(params, sample, timesteps, encoder_hidden_states, first_frame_latents, frame_stride):
        return model.apply(
            {"params": params},
            sample,
            timesteps,
            encoder_hidden_states,
            first_frame_latents=first_frame_latents,
            frame_stride=frame_stride,
        )

    def apply(params, sample, timesteps, encoder_hidden_states, first_frame_latents, frame_stride):
        batch = (sample.shape[0],)
        return compiled(
            params,
            sample,
            np.broadcast_to(np.asarray(timesteps, np.float32), batch),
            encoder_hidden_states,
            first_frame_latents,
            np.broadcast_to(np.asarray(frame_stride, np.float32), batch),
        )

    return apply


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A workdir with configs/micro.py trained for 3 steps (one device) through launch/train.py."""
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("micro_run")
    workdir = tmp / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(
        [
            sys.executable,
            str(root / "launch" / "train.py"),
            f"--config={root / 'configs' / 'micro.py'}",
            f"--workdir={workdir}",
            f"--config.data.dir={tmp / 'data'}",
            "--config.train.steps=3",
            "--config.tensorboard=False",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
