"""Loading ml_collections config files (`configs/*.py` with a `get_config()`)."""

from __future__ import annotations

import importlib.util
import os

import jax.numpy as jnp
import ml_collections

from jax_i2v.models.config import UNetConfig
from jax_i2v.models.unet import build_unet

# Config / command-line dtype names.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_config(path: str) -> ml_collections.ConfigDict:
    """Imports `path` and returns its `get_config()`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_jax_i2v_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    return module.get_config()


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    """The `unet` section of an experiment config as a validated UNetConfig."""
    return UNetConfig(**config.unet.to_dict())


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A ConfigDict from a saved (JSON) experiment config; lists become tuples as written in configs/."""

    def restore(value):
        if isinstance(value, dict):
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(restore(v) for v in value)
        return value

    return ml_collections.ConfigDict(restore(values))


def attention_setting(config: ml_collections.ConfigDict) -> str:
    """The config's `model.attention` ("auto" for configs written before the key existed)."""
    return (config.get("model") or {}).get("attention", "auto")


def unet_from_config(config: ml_collections.ConfigDict, *, platform=None, attention=None, **kwargs):
    """The experiment's video UNet: its `unet` architecture, compute / param dtypes and attention
    kernels resolved for `platform` (default: that of `jax.devices()`)."""
    return build_unet(
        unet_config(config),
        dtype=dtype(config.get("dtype", "float32")),
        param_dtype=dtype(config.get("param_dtype", "float32")),
        attention=attention or attention_setting(config),
        platform=platform,
        **kwargs,
    )
