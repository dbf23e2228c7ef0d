"""LoRA as a pure params transform: student kernel = teacher kernel + scale * (A @ B).

MCM trains the student as PEFT LoRA (rank 64, alpha 64) on the modules whose names end in the
spec's list (mcm.md 1.1); the temporal 3D convs are left out, as the reference leaves out
ModelScope's. Dense kernels (in, out) get A (in, r), B (r, out); conv kernels (kh, kw, in, out) get
A (kh, kw, in, r), a conv to rank r, and B (r, out), a 1x1 conv, as PEFT's Conv2d LoRA. B starts
at zero, so the student starts equal to the teacher. `merge` gives plain params for export.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

# Module names (Flax) whose kernels get deltas: attention projections, transformer in/out
# projections, feed-forward layers, resnet convs and time projections, resamplers.
TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out_0",
    "proj_in",
    "proj_out",
    "proj",  # ff/net_0/proj, the GEGLU input projection
    "net_2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",  # downsamplers_0/conv, upsamplers_0/conv
    "time_emb_proj",
)
# Kernels under these modules keep the teacher's weights (the temporal 3D convs).
EXCLUDED_MODULES = ("conv3ds",)

Params = Any
Path = tuple[str, ...]


def _is_target(path: Path) -> bool:
    if path[-1] != "kernel" or len(path) < 2 or any(p.startswith(EXCLUDED_MODULES) for p in path):
        return False
    module = path[-2]
    if module == "conv":
        return len(path) >= 3 and path[-3] in ("downsamplers_0", "upsamplers_0")
    if module == "proj":
        return len(path) >= 3 and path[-3] == "net_0"
    return module in TARGET_MODULES


def target_paths(params: Params) -> list[Path]:
    """The kernels LoRA adapts, in a stable order."""
    return sorted(path for path in traverse_util.flatten_dict(params) if _is_target(path))


def init_lora(params: Params, rank: int, rng: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """{"a/b/kernel": {"a": A, "b": B}} for every target kernel: A ~ PEFT's Kaiming-uniform
    (bound 1/sqrt(fan_in)), B = 0."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    flat = traverse_util.flatten_dict(params)
    paths = target_paths(params)
    if not paths:
        raise ValueError("no LoRA target modules in these params")
    lora = {}
    for key, path in zip(jax.random.split(rng, len(paths)), paths):
        kernel = flat[path]
        fan_in = math.prod(kernel.shape[:-1])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(key, kernel.shape[:-1] + (rank,), jnp.float32, -bound, bound)
        b = jnp.zeros((rank, kernel.shape[-1]), jnp.float32)
        lora["/".join(path)] = {"a": a, "b": b}
    return lora


def delta(lora_pair: Mapping[str, jax.Array]) -> jax.Array:
    """A @ B over the last axis of A: a kernel-shaped update."""
    return jnp.tensordot(lora_pair["a"], lora_pair["b"], axes=1)


def merge(params: Params, lora: Mapping[str, Mapping[str, jax.Array]], scale: float = 1.0) -> Params:
    """Teacher params + scale * deltas (scale = lora_alpha / rank; MCM's 64 / 64 = 1)."""
    flat = dict(traverse_util.flatten_dict(params))
    for name, pair in lora.items():
        path = tuple(name.split("/"))
        if path not in flat:
            raise KeyError(f"LoRA delta for {name}, which these params do not have")
        kernel = flat[path]
        flat[path] = (kernel.astype(jnp.float32) + scale * delta(pair)).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
