"""The diffusers pipeline folder layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/
and scheduler/ (the released ConsistI2V's), read into and written from the library's components."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax.numpy as jnp

from jax_i2v.convert import load_text_encoder, load_unet, load_vae, parse_config_file, save_text_encoder, save_unet, save_vae
from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.models.autoencoder_kl import KLCodec
from jax_i2v.models.clip import CLIPTextEncoder

MODEL_INDEX_NAME = "model_index.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
PIPELINE_FILES = (MODEL_INDEX_NAME, "unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The released checkpoint's pipeline class and components (the reference repository's module paths).
MODEL_INDEX = {
    "_class_name": "ConditionalAnimationPipeline",
    "unet": ["consisti2v.models.videoldm_unet", "VideoLDMUNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


def load_components(folder: str, dtype=jnp.float32, decode_chunk: int = 8, **unet_kwargs) -> dict[str, Any]:
    """`I2VPipeline` fields (unet, params, text_encoder, vae, scheduler) from a pipeline folder.
    The scheduler is DDIM, or the consistency sampler for an `LCMScheduler` config. Nothing is
    downloaded."""
    missing = [os.path.join(folder, name) for name in PIPELINE_FILES if not os.path.exists(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"not a diffusers pipeline folder, missing: {', '.join(missing)}")
    path = functools.partial(os.path.join, folder)
    unet, params = load_unet(path("unet"), dtype=dtype, **unet_kwargs)
    return dict(
        unet=unet,
        params=params,
        text_encoder=load_text_encoder(path("text_encoder"), path("tokenizer"), dtype=dtype),
        vae=load_vae(path("vae"), decode_chunk=decode_chunk, dtype=dtype),
        scheduler=parse_config_file(path("scheduler", SCHEDULER_CONFIG_NAME), _scheduler_from_diffusers),
    )


def save_components(folder: str, unet_config, params, text_encoder, vae, scheduler: DDIMConfig | LCMConfig) -> None:
    """Writes the layout `load_components` and the reference code read (safetensors weights, the
    reference's keys, shapes and config keys)."""
    if not isinstance(text_encoder, CLIPTextEncoder) or not isinstance(vae, KLCodec):
        raise ValueError(
            "the diffusers layout holds a CLIP text encoder and an AutoencoderKL; this pipeline has "
            f"{type(text_encoder).__name__} and {type(vae).__name__}"
        )
    path = functools.partial(os.path.join, folder)
    save_unet(path("unet"), unet_config, params)
    save_vae(path("vae"), vae)
    save_text_encoder(path("text_encoder"), text_encoder)
    text_encoder.tokenizer.save(path("tokenizer"))
    os.makedirs(path("scheduler"), exist_ok=True)
    scheduler_config = scheduler.to_diffusers()
    with open(path("scheduler", SCHEDULER_CONFIG_NAME), "w") as f:
        json.dump(scheduler_config, f, indent=2)
    with open(path(MODEL_INDEX_NAME), "w") as f:  # last: a folder with an index is complete
        json.dump({**MODEL_INDEX, "scheduler": ["diffusers", scheduler_config["_class_name"]]}, f, indent=2)


def _scheduler_from_diffusers(settings: dict) -> DDIMConfig | LCMConfig:
    kind = LCMConfig if settings.get("_class_name") == "LCMScheduler" else DDIMConfig
    return kind.from_diffusers(settings)
