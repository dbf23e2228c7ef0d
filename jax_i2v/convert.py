"""diffusers-layout UNet checkpoints <-> Flax params (no torch needed).

A diffusers folder holds `config.json` and `diffusion_pytorch_model.safetensors`
with PyTorch state-dict names such as `down_blocks.0.tempo_attns.1.transformer_blocks.0.attn1.to_q.weight`.
The Flax tree mirrors those names: an index joins its container
(`down_blocks_0`), `weight` becomes `kernel` (Linear/Conv, transposed to
(..., in, out)) or `scale` (norms).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jax_i2v.models.config import (
    DEAD_ROTARY_BIAS_BUCKETS,
    DEAD_TEMPORAL_TEMB_DIM,
    UNetConfig,
)
from jax_i2v.models.unet import VideoUNet, build_unet, dummy_inputs

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# Containers whose children PyTorch indexes: `resnets.0` <-> `resnets_0`.
_INDEXED = (
    "down_blocks",
    "up_blocks",
    "resnets",
    "attentions",
    "conv3ds",
    "tempo_attns",
    "transformer_blocks",
    "downsamplers",
    "upsamplers",
    "to_out",
    "net",
)
# Weights the reference stores but never uses: skipped on load, written as zeros on export.
_DEAD_KEY = re.compile(r"(conv3ds\.\d+\.time_emb_proj\.(weight|bias)|rotary_bias\.relative_attention_bias\.weight)$")
_INDEXED_FLAX = re.compile(r"^(%s)_(\d+)$" % "|".join(_INDEXED))

Params = Mapping[str, Any]


def torch_key_to_flax_path(key: str, ndim: int) -> tuple[str, ...]:
    parts = key.split(".")
    path: list[str] = []
    for part in parts[:-1]:
        if part.isdigit():
            if not path or path[-1] not in _INDEXED:
                raise KeyError(f"unexpected index in key {key!r}")
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    leaf = parts[-1]
    if leaf == "weight":
        leaf = "kernel" if ndim > 1 else "scale"
    return tuple(path) + (leaf,)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    parts = []
    for name in path[:-1]:
        m = _INDEXED_FLAX.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale") else leaf)
    return ".".join(parts)


def _torch_to_flax_array(value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    if value.ndim == len(target_shape) and value.ndim <= 1:
        return value
    if len(target_shape) == 2 and value.ndim == 4 and value.shape[2:] == (1, 1):
        value = value[:, :, 0, 0]  # 1x1 conv projection stored where we use a Dense
    if value.ndim == 2:
        return value.T
    if value.ndim in (4, 5):  # (O, I, *k) -> (*k, I, O)
        return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    return value


def _flax_to_torch_array(value: np.ndarray, torch_ndim: int) -> np.ndarray:
    if value.ndim <= 1:
        return value
    if value.ndim == 2:
        value = value.T
        return value[:, :, None, None] if torch_ndim == 4 else value
    n = value.ndim  # (*k, I, O) -> (O, I, *k)
    return np.transpose(value, (n - 1, n - 2) + tuple(range(n - 2)))


def param_shapes(model: VideoUNet) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the model's params, traced with `jax.eval_shape` (nothing allocated)."""
    inputs = dummy_inputs(model.config)
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"]
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(tree).items()}


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], model: VideoUNet, source: str = "state dict") -> Params:
    """Reference state dict -> Flax params tree, checking every key and shape."""
    expected = param_shapes(model)
    flat, unknown, mismatched = {}, [], []
    for key, value in state_dict.items():
        if _DEAD_KEY.search(key):
            continue
        value = np.asarray(value)
        try:
            path = torch_key_to_flax_path(key, value.ndim)
        except KeyError:
            unknown.append(key)
            continue
        if path not in expected:
            unknown.append(key)
            continue
        converted = _torch_to_flax_array(value, expected[path])
        if converted.shape != expected[path]:
            mismatched.append(f"{key}: got {value.shape}, expected {expected[path]} (Flax layout)")
            continue
        if path[-1] == "alpha":
            converted = np.clip(converted, 0.0, 1.0)
        flat[path] = converted
    missing = sorted(flax_path_to_torch_key(p) for p in expected if p not in flat)
    errors = []
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)}")
    if mismatched:
        errors.append(f"shape mismatches {mismatched}")
    if missing:
        errors.append(f"missing keys {missing}")
    if errors:
        raise ValueError(f"{source} does not match the UNet config: " + "; ".join(errors))
    return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: Params, config: UNetConfig) -> dict[str, np.ndarray]:
    """Flax params -> reference state dict (same names and shapes), dead weights as zeros."""
    projection_ndim = 2 if config.use_linear_projection else 4
    out: dict[str, np.ndarray] = {}
    for path, value in traverse_util.flatten_dict(params).items():
        key = flax_path_to_torch_key(path)
        torch_ndim = projection_ndim if path[-2] in ("proj_in", "proj_out") else None
        out[key] = np.ascontiguousarray(_flax_to_torch_array(np.asarray(value, np.float32), torch_ndim))
        if key.endswith("conv1.bias") and ".conv3ds." in key:
            block = key[: -len("conv1.bias")]
            channels = value.shape[0]
            out[block + "time_emb_proj.weight"] = np.zeros((channels, DEAD_TEMPORAL_TEMB_DIM), np.float32)
            out[block + "time_emb_proj.bias"] = np.zeros((channels,), np.float32)
        if key.endswith("rotary_emb.freqs"):
            attn = key[: -len("rotary_emb.freqs")]
            out[attn + "rotary_bias.relative_attention_bias.weight"] = np.zeros(
                (DEAD_ROTARY_BIAS_BUCKETS, config.n_temp_heads), np.float32
            )
    return out


def read_unet_config(unet_dir: str) -> UNetConfig:
    path = os.path.join(unet_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no UNet config at {path}")
    with open(path) as f:
        try:
            return UNetConfig.from_diffusers(json.load(f))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def load_unet(unet_dir: str, dtype=jnp.float32, param_dtype=jnp.float32, **model_kwargs) -> tuple[VideoUNet, Params]:
    """Loads a diffusers-layout `unet/` folder: returns (model, params) on the default device.

    `model.apply({"params": params}, sample, timesteps, encoder_hidden_states,
    first_frame_latents=..., frame_stride=...)` then runs it channels-last.
    """
    config = read_unet_config(unet_dir)
    weights = os.path.join(unet_dir, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no UNet weights at {weights}")
    model = build_unet(config, dtype=dtype, param_dtype=param_dtype, **model_kwargs)
    params = state_dict_to_params(load_file(weights), model, source=weights)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, param_dtype), params)
    return model, params


def save_unet(unet_dir: str, config: UNetConfig, params: Params) -> None:
    """Writes `config.json` + `diffusion_pytorch_model.safetensors` that the reference code loads."""
    os.makedirs(unet_dir, exist_ok=True)
    state_dict = params_to_state_dict(jax.device_get(params), config)
    tmp = os.path.join(unet_dir, WEIGHTS_NAME + ".tmp")
    save_file(state_dict, tmp)
    os.replace(tmp, os.path.join(unet_dir, WEIGHTS_NAME))
    with open(os.path.join(unet_dir, CONFIG_NAME), "w") as f:
        json.dump(config.to_diffusers(), f, indent=2)
