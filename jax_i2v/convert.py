"""diffusers-layout model folders (the UNet, the VAE, the CLIP text encoder) <-> Flax params (no torch needed).

A diffusers folder holds `config.json` and `diffusion_pytorch_model.safetensors`
with PyTorch state-dict names such as `down_blocks.0.tempo_attns.1.transformer_blocks.0.attn1.to_q.weight`.
The Flax tree mirrors those names: an index joins its container
(`down_blocks_0`), `weight` becomes `kernel` (Linear/Conv, transposed to
(..., in, out)) or `scale` (norms).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jax_i2v.models.autoencoder_kl import AutoencoderKLConfig, KLCodec, vae_param_shapes
from jax_i2v.models.clip import (
    CLIPTextConfig,
    CLIPTextEncoder,
    CLIPTokenizer,
    clip_param_shapes,
)
from jax_i2v.models.config import (
    DEAD_ROTARY_BIAS_BUCKETS,
    DEAD_TEMPORAL_TEMB_DIM,
    UNetConfig,
)
from jax_i2v.models.unet import VideoUNet, build_unet, dummy_inputs
from jax_i2v.parallel.hosts import host_copy

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
    "layers",
    "blocks",
)
# PyTorch nn.Embedding tables: (num, dim) in both layouts, `embedding` in Flax.
_EMBEDDING_KEY = re.compile(r"(^|\.)(token|position)_embedding\.weight$")
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
    if _EMBEDDING_KEY.search(key):
        leaf = "embedding"
    elif leaf == "weight":
        leaf = "kernel" if ndim > 1 else "scale"
    return tuple(path) + (leaf,)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    parts = []
    for name in path[:-1]:
        m = _INDEXED_FLAX.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
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


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping[tuple[str, ...], tuple[int, ...]],
    source: str,
    what: str,
    skip: Optional[re.Pattern] = None,
) -> dict[tuple[str, ...], np.ndarray]:
    """PyTorch state dict -> flat {Flax path: array}, checking every key and shape against
    `expected` (flat {path: shape}); errors name `source` (the file) and each offending key."""
    flat, unknown, mismatched = {}, [], []
    for key, value in state_dict.items():
        if skip is not None and skip.search(key):
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
        converted = value if path[-1] == "embedding" else _torch_to_flax_array(value, expected[path])
        if converted.shape != expected[path]:
            mismatched.append(f"{key}: got {value.shape}, expected {expected[path]} (Flax layout)")
            continue
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
        raise ValueError(f"{source} does not match {what}: " + "; ".join(errors))
    return flat


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], model: VideoUNet, source: str = "state dict") -> Params:
    """Reference state dict -> Flax params tree, checking every key and shape."""
    flat = convert_state_dict(state_dict, param_shapes(model), source, "the UNet config", skip=_DEAD_KEY)
    flat = {path: np.clip(v, 0.0, 1.0) if path[-1] == "alpha" else v for path, v in flat.items()}
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
            out[attn + "rotary_bias.relative_attention_bias.weight"] = np.zeros((DEAD_ROTARY_BIAS_BUCKETS, config.n_temp_heads), np.float32)
    return out


def read_unet_config(unet_dir: str) -> UNetConfig:
    """Reads `unet_dir/config.json`; `unet_dir` may also name the JSON file itself."""
    path = unet_dir if unet_dir.endswith(".json") else os.path.join(unet_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no UNet config at {path}")
    return parse_config_file(path, UNetConfig.from_diffusers)


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


# Layers a video UNet has and an image UNet does not; everything else maps 1:1 onto diffusers'
# UNet2DConditionModel names.
_VIDEO_ONLY_MODULES = ("conv3ds_", "tempo_attns_", "frame_stride_embedding", "first_frame_conv")
# UNetConfig fields that only the video UNet has (or that do not change its parameters).
_VIDEO_FIELDS = (
    "sample_size",
    "use_temporal",
    "n_frames",
    "n_temp_heads",
    "first_frame_condition_mode",
    "augment_temporal_attention",
    "temp_pos_embedding",
    "use_frame_stride_condition",
)
# UNet2DConditionModel options without a VideoLDM counterpart: accepted at their default.
_IMAGE_UNET_ONLY_OPTIONS = {"reverse_transformer_layers_per_block": None}


def _image_unet_config(settings: dict) -> UNetConfig:
    settings = dict(settings)
    for key, default in _IMAGE_UNET_ONLY_OPTIONS.items():
        if settings.pop(key, default) != default:
            raise ValueError(f"{key} is not supported (only {default!r})")
    return UNetConfig.from_diffusers(settings)


def _is_video_only(path: tuple[str, ...]) -> bool:
    return any(name.startswith(_VIDEO_ONLY_MODULES) for name in path)


def inflate_unet(image_unet_dir: str, model: VideoUNet, params: Params) -> Params:
    """`params` of `model` with the spatial weights of an image UNet folder (a diffusers
    UNet2DConditionModel such as SD-2.1-base's `unet/`) written in, as the reference inflates SD.

    The video-only layers (temporal convs and attentions, their alpha mixers, the stride embedding)
    keep their values from `params`: freshly initialised, alphas 1 and the stride embedding's last
    layer zero, the model then computes the image UNet on every frame (with first-frame attention
    off). The spatial architecture of `model.config` must equal the folder's. Sharded `params`
    stay sharded: the loaded weights are placed shard by shard.
    """
    image, state_dict, weights = _read_model_folder(image_unet_dir, "image UNet", _image_unet_config)
    config_path = os.path.join(image_unet_dir, CONFIG_NAME)
    differ = [
        f"{f.name}: {getattr(image, f.name)!r} there, {getattr(model.config, f.name)!r} here"
        for f in dataclasses.fields(UNetConfig)
        if f.name not in _VIDEO_FIELDS and getattr(image, f.name) != getattr(model.config, f.name)
    ]
    if differ:
        raise ValueError(f"{config_path}: the video UNet's spatial layers differ from this image UNet: " + "; ".join(differ))
    shapes = param_shapes(model)
    spatial = {path: shape for path, shape in shapes.items() if not _is_video_only(path)}
    loaded = convert_state_dict(state_dict, spatial, weights, "the video UNet's spatial layers")
    flat = traverse_util.flatten_dict(params)
    for path, value in loaded.items():
        flat[path] = _placed_like(value, flat[path])
    return traverse_util.unflatten_dict(flat)


def _placed_like(value: np.ndarray, like: Any) -> Any:
    """`value` with `like`'s dtype and, for a jax.Array, its sharding: each process places only its
    own shards, so a sharded state is filled without any device holding a whole weight set."""
    if not isinstance(like, jax.Array):
        return jnp.asarray(value, like.dtype)
    value = np.asarray(value, like.dtype)
    return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])


def save_unet(unet_dir: str, config: UNetConfig, params: Params) -> None:
    """Writes `config.json` + `diffusion_pytorch_model.safetensors` that the reference code loads.
    Params split across processes are gathered (every process calls this); process 0 writes."""
    params = host_copy(params)
    if jax.process_index() == 0:
        _write_model_folder(unet_dir, params_to_state_dict(params, config), config.to_diffusers())


def _write_model_folder(
    folder: str, state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any], weights_name: str = WEIGHTS_NAME
) -> None:
    """The weights first (atomically), then the config, so a folder with a config is complete."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, weights_name + ".tmp")
    save_file(dict(state_dict), tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(folder, weights_name))
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)


def parse_config_file(path: str, parse: Callable[[dict], Any]) -> Any:
    """`parse` of the JSON at `path`; a bad setting is a ValueError that names the file."""
    with open(path) as f:
        settings = json.load(f)
    try:
        return parse(settings)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _read_model_folder(
    folder: str, what: str, parse: Callable[[dict], Any], weights_name: str = WEIGHTS_NAME
) -> tuple[Any, dict[str, np.ndarray], str]:
    """(parsed config, state dict, weights path) of a model folder; errors name the missing file
    or the config file with the bad setting."""
    config_path, weights = os.path.join(folder, CONFIG_NAME), os.path.join(folder, weights_name)
    for path in (config_path, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {what} {'config' if path == config_path else 'weights'} at {path}")
    return parse_config_file(config_path, parse), load_file(weights), weights


# Attention names of VAE checkpoints written before diffusers 0.14, renamed as diffusers renames them.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_VAE_KEY = re.compile(r"\.attentions\.(\d+)\.(query|key|value|proj_attn)\.")


def _modern_vae_key(key: str) -> str:
    return _LEGACY_VAE_KEY.sub(lambda m: f".attentions.{m.group(1)}.{_LEGACY_VAE_ATTENTION[m.group(2)]}.", key)


def load_vae(vae_dir: str, decode_chunk: int = 8, dtype=jnp.float32) -> KLCodec:
    """Loads a diffusers `vae/` folder (AutoencoderKL) as a latent codec."""
    config, state_dict, weights = _read_model_folder(vae_dir, "VAE", AutoencoderKLConfig.from_diffusers)
    state_dict = {_modern_vae_key(k): v for k, v in state_dict.items()}
    flat = convert_state_dict(state_dict, vae_param_shapes(config), weights, "the VAE config")
    params = jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat))
    return KLCodec(config, params, decode_chunk=decode_chunk, dtype=dtype)


def _export_state_dict(params: Params, prefix: str = "") -> dict[str, np.ndarray]:
    """Flax params -> PyTorch state dict for models whose Dense layers are all nn.Linear."""
    out = {}
    for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
        value = np.asarray(value, np.float32)
        value = value if path[-1] == "embedding" else _flax_to_torch_array(value, None)
        out[prefix + flax_path_to_torch_key(path)] = np.ascontiguousarray(value)
    return out


def save_vae(vae_dir: str, codec: KLCodec) -> None:
    """Writes a diffusers `vae/` folder that `AutoencoderKL.from_pretrained` loads."""
    _write_model_folder(vae_dir, _export_state_dict(codec.params), codec.config.to_diffusers())


# transformers' CLIPTextModel weights; checkpoints from before transformers 5 prefix every key.
TEXT_WEIGHTS_NAME = "model.safetensors"
_TEXT_MODEL_PREFIX = "text_model."


def load_text_encoder(text_encoder_dir: str, tokenizer_dir: str, dtype=jnp.float32) -> CLIPTextEncoder:
    """Loads a diffusers pipeline's `text_encoder/` (CLIPTextModel) and `tokenizer/` folders."""
    config, state_dict, weights = _read_model_folder(text_encoder_dir, "text encoder", CLIPTextConfig.from_transformers, TEXT_WEIGHTS_NAME)
    state_dict = {k.removeprefix(_TEXT_MODEL_PREFIX): v for k, v in state_dict.items()}
    state_dict.pop("embeddings.position_ids", None)  # a buffer older transformers saved
    flat = convert_state_dict(state_dict, clip_param_shapes(config), weights, "the text encoder config")
    params = jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat))
    return CLIPTextEncoder(config, params, CLIPTokenizer.from_folder(tokenizer_dir), dtype=dtype)


def save_text_encoder(text_encoder_dir: str, encoder: CLIPTextEncoder) -> None:
    """Writes a `text_encoder/` folder in the layout every transformers version loads."""
    state_dict = _export_state_dict(encoder.params, _TEXT_MODEL_PREFIX)
    _write_model_folder(text_encoder_dir, state_dict, encoder.config.to_transformers(), TEXT_WEIGHTS_NAME)
