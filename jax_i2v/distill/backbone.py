"""The discriminator's frozen feature backbone: a DINOv2-architecture ViT (pre-norm blocks with
LayerScale, a class token, learned positions) returning the final-normed patch tokens of hooked
blocks, as DINOv2's `get_intermediate_layers(..., norm=True)`.

At scale it is DINOv2 ViT-S/14 (`ViTConfig.dinov2_vits14()`, hooks 2, 5, 8, 11) converted from
its published weights (`load_vit`); CPU configs use a small one. Parameter names follow the
original DINOv2 checkpoint (`blocks.3.attn.qkv.weight` -> `blocks_3/attn/qkv/kernel`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jax_i2v.convert import convert_state_dict
from jax_i2v.models.attention import dot_product_attention

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224  # inputs are resized to this; the position grid is image_size / patch_size
    patch_size: int = 14
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    hooks: tuple[int, ...] = (2, 5, 8, 11)

    def __post_init__(self):
        if self.image_size % self.patch_size or self.width % self.heads:
            raise ValueError(f"need image_size % patch_size == 0 and width % heads == 0, got {self}")
        if not self.hooks or not all(0 <= h < self.depth for h in self.hooks):
            raise ValueError(f"hooks {self.hooks} must index blocks 0..{self.depth - 1}")

    @classmethod
    def dinov2_vits14(cls) -> "ViTConfig":
        return cls()

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class _LayerScale(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("gamma", nn.initializers.ones, (x.shape[-1],))


class _Attention(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x):
        n, t, d = x.shape
        q, k, v = (a.reshape(n, t, self.heads, d // self.heads) for a in jnp.split(nn.Dense(3 * d, name="qkv")(x), 3, axis=-1))
        return nn.Dense(d, name="proj")(dot_product_attention(q, k, v).reshape(n, t, d))


class _MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        h = jax.nn.gelu(nn.Dense(self.hidden, name="fc1")(x), approximate=False)
        return nn.Dense(x.shape[-1], name="fc2")(h)


class _Block(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = x + _LayerScale(name="ls1")(_Attention(cfg.heads, name="attn")(nn.LayerNorm(cfg.layer_norm_eps, name="norm1")(x)))
        hidden = int(cfg.width * cfg.mlp_ratio)
        return x + _LayerScale(name="ls2")(_MLP(hidden, name="mlp")(nn.LayerNorm(cfg.layer_norm_eps, name="norm2")(x)))


class _PatchEmbed(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images):
        p = self.config.patch_size
        x = nn.Conv(self.config.width, (p, p), strides=(p, p), padding="VALID", name="proj")(images)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class ViT(nn.Module):
    """(N, image_size, image_size, 3) normalised images -> one (N, tokens, width) array per hook:
    the patch tokens after that block, through the final LayerNorm (class token dropped)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images) -> list[jax.Array]:
        cfg = self.config
        if images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"the backbone takes {cfg.image_size}x{cfg.image_size} images, got {images.shape[1:3]}")
        x = _PatchEmbed(cfg, name="patch_embed")(images)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, cfg.width))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, cfg.tokens + 1, cfg.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.width)), x], axis=1) + pos
        norm = nn.LayerNorm(cfg.layer_norm_eps, name="norm")
        outputs = []
        for i in range(max(cfg.hooks) + 1):
            x = _Block(cfg, name=f"blocks_{i}")(x)
            if i in cfg.hooks:
                outputs.append(norm(x)[:, 1:])
        return outputs


def vit_param_shapes(config: ViTConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape}; blocks past the last hook are not built (their outputs are unused)."""
    images = jnp.zeros((1, config.image_size, config.image_size, 3))
    tree = jax.eval_shape(lambda: ViT(config).init(jax.random.key(0), images))["params"]
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(tree).items()}


def original_from_transformers(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' Dinov2Model names -> the original DINOv2 checkpoint's: the on-disk layout of
    facebook/dinov2-small (`attention.attention.query`) and transformers 5's in-memory one
    (`attention.q_proj`); the separate q/k/v projections are fused into qkv."""
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
        "encoder.layer.": "blocks.",
        ".attention.attention.query.": ".attention.q_proj.",
        ".attention.attention.key.": ".attention.k_proj.",
        ".attention.attention.value.": ".attention.v_proj.",
        ".attention.output.dense.": ".attn.proj.",
        ".attention.o_proj.": ".attn.proj.",
        ".layer_scale1.lambda1": ".ls1.gamma",
        ".layer_scale2.lambda1": ".ls2.gamma",
        "layernorm.": "norm.",
    }
    out, qkv = {}, {}
    for key, value in state_dict.items():
        if key == "embeddings.mask_token":
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        block, sep, rest = key.partition(".attention.")
        if sep:  # "{q,k,v}_proj.{weight,bias}"
            qkv.setdefault(block, {})[rest] = np.asarray(value)
            continue
        out[key] = np.asarray(value)
    for block, pieces in qkv.items():
        for leaf in ("weight", "bias"):
            out[f"{block}.attn.qkv.{leaf}"] = np.concatenate([pieces[f"{n}_proj.{leaf}"] for n in "qkv"])
    return out


def save_vit(folder: str, config: ViTConfig, state_dict: Mapping[str, np.ndarray]) -> None:
    """A backbone folder: config.json + model.safetensors in the original DINOv2 names."""
    os.makedirs(folder, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}, os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)


def read_vit_config(folder: str, hooks: Sequence[int] | None = None) -> ViTConfig:
    """The architecture a `save_vit` folder holds (no weights read); `hooks` overrides the saved ones."""
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        settings = json.load(f)
    settings["hooks"] = tuple(hooks if hooks is not None else settings["hooks"])
    return ViTConfig(**settings)


def load_vit(folder: str, hooks: Sequence[int] | None = None) -> tuple[ViTConfig, Any]:
    """(config, params) from a `save_vit` folder; `hooks` overrides the saved ones."""
    config = read_vit_config(folder, hooks)
    weights = os.path.join(folder, WEIGHTS_NAME)
    state_dict = {k: v for k, v in load_file(weights).items() if k != "mask_token"}
    shapes = vit_param_shapes(config)
    built = {int(p[0].split("_")[1]) for p in shapes if p[0].startswith("blocks_")}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("blocks.") or int(k.split(".")[1]) in built}
    flat = convert_state_dict(state_dict, shapes, weights, "the backbone config")
    return config, jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat))
