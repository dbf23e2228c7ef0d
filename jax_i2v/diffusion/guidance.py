"""Classifier-free guidance for first-frame-conditioned video models (ConsistI2V `pipe.py:339-342, 651-667`).

Modes:
  "none":       one pass with the caption and the clean first frame.
  "text":       batch of 2, [empty caption, caption], both with the clean first frame;
                out = u + s_txt (c - u).
  "text_image": batch of 3, [empty caption + noisy first frame, empty caption + clean first frame,
                caption + clean first frame]; out = u + s_img (img - u) + s_txt (both - img).
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

GUIDANCE_MODES = ("none", "text", "text_image")

# apply_fn(sample, timesteps (B,), text (B, L, D), first_frame (B, 1, H, W, C) or None, frame_stride (B,))
ApplyFn = Callable[..., jax.Array]


@flax.struct.dataclass
class Conditioning:
    """Everything a video is conditioned on; arrays are per video (leading dim B).

    text, null_text: (B, L, D) caption and empty-caption (or negative prompt) embeddings.
    first_frame: (B, 1, H, W, C) clean conditioning latent; None for unconditioned models.
    noisy_first_frame: (B, 1, H, W, C) the image-unconditional frame ("text_image" mode only).
    frame_stride: (B,).
    """

    text: jax.Array
    null_text: jax.Array
    frame_stride: jax.Array
    first_frame: Optional[jax.Array] = None
    noisy_first_frame: Optional[jax.Array] = None


def guidance_mode(text_scale: float, image_scale: float) -> str:
    """The reference's rule (`pipe.py:516-521`): image guidance if s_img > 1, else text if s_txt > 1."""
    if image_scale > 1.0:
        return "text_image"
    if text_scale > 1.0:
        return "text"
    return "none"


def guided_prediction(
    apply_fn: ApplyFn,
    sample: jax.Array,
    timestep: jax.Array,
    cond: Conditioning,
    mode: str,
    text_scale=1.0,
    image_scale=1.0,
) -> jax.Array:
    """Guided model output for `sample` (B, F', H, W, C) at scalar `timestep`, float32."""
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    branches = {"none": 1, "text": 2, "text_image": 3}[mode]
    batch = sample.shape[0]
    if mode == "none":
        texts, firsts = [cond.text], [cond.first_frame]
    elif mode == "text":
        texts, firsts = [cond.null_text, cond.text], [cond.first_frame] * 2
    else:
        if cond.first_frame is None or cond.noisy_first_frame is None:
            raise ValueError("text_image guidance needs first_frame and noisy_first_frame")
        texts = [cond.null_text, cond.null_text, cond.text]
        firsts = [cond.noisy_first_frame, cond.first_frame, cond.first_frame]

    def stack(parts):
        return jnp.concatenate(parts, axis=0)

    first = None if cond.first_frame is None else stack(firsts)
    out = apply_fn(
        stack([sample] * branches),
        jnp.full((batch * branches,), timestep, jnp.int32),
        stack(texts),
        first,
        stack([cond.frame_stride] * branches),
    ).astype(jnp.float32)
    if mode == "none":
        return out
    if mode == "text":
        uncond, text = jnp.split(out, 2)
        return uncond + text_scale * (text - uncond)
    uncond, image, both = jnp.split(out, 3)
    return uncond + image_scale * (image - uncond) + text_scale * (both - image)
