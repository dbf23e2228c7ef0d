"""MCM's frame discriminator (spec mcm.md section 3): DiffAugment, a frozen ViT backbone whose
intermediate patch tokens feed StyleGAN-T-style projected heads conditioned on a text embedding,
the hinge losses and the gradient penalty on backbone features.

Images are channels-last (N, H, W, 3) in [-1, 1]; token features (N, T, D).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Virtual batch of BatchNormLocal: statistics over groups of this many samples.
LOCAL_BATCH = 8
AUGMENTATIONS = ("color", "translation", "cutout")
ALL_AUGMENTATIONS = ",".join(AUGMENTATIONS)  # DiffAugment's policy string with every part


def parse_augment_policy(policy: str) -> tuple[str, ...]:
    """DiffAugment's policy string ("color,translation,cutout"; "" for none) -> its parts."""
    parts = tuple(p for p in policy.split(",") if p)
    unknown = set(parts) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown DiffAugment parts {sorted(unknown)} in {policy!r}; known: {AUGMENTATIONS}")
    return parts


def diff_augment(rng: jax.Array, images: jax.Array, policy: str = ALL_AUGMENTATIONS) -> jax.Array:
    """DiffAugment (Zhao et al. 2020), independent draws per image, the parts named in `policy`:
    color: brightness + U(-0.5, 0.5), saturation x U(0, 2) about the pixel's channel mean,
    contrast x U(0.5, 1.5) about the image mean; translation: a shift of up to 1/8 of the size
    with zero fill; cutout: a zeroed square of side 1/5 of the size at a random centre."""
    parts = parse_augment_policy(policy)
    n, h, w, _ = images.shape
    keys = jax.random.split(rng, 7)
    x = images.astype(jnp.float32)
    if "color" in parts:
        x = x + jax.random.uniform(keys[0], (n, 1, 1, 1), minval=-0.5, maxval=0.5)
        mean = x.mean(axis=-1, keepdims=True)
        x = (x - mean) * jax.random.uniform(keys[1], (n, 1, 1, 1), maxval=2.0) + mean
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * jax.random.uniform(keys[2], (n, 1, 1, 1), minval=0.5, maxval=1.5) + mean
    if "translation" in parts:
        x = _translate(keys[3], keys[4], x)
    if "cutout" in parts:
        x = _cut_out(keys[5], keys[6], x)
    return x


def _translate(key_y: jax.Array, key_x: jax.Array, x: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    max_y, max_x = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    dy = jax.random.randint(key_y, (n,), -max_y, max_y + 1)
    dx = jax.random.randint(key_x, (n,), -max_x, max_x + 1)
    padded = jnp.pad(x, ((0, 0), (max_y, max_y), (max_x, max_x), (0, 0)))
    return jax.vmap(lambda image, top, left: jax.lax.dynamic_slice(image, (top, left, 0), (h, w, x.shape[-1])))(
        padded, max_y - dy, max_x - dx
    )


def _cut_out(key_y: jax.Array, key_x: jax.Array, x: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    size_y, size_x = int(h * 0.2 + 0.5), int(w * 0.2 + 0.5)
    top = jax.random.randint(key_y, (n, 1, 1), 0, h + (1 - size_y % 2)) - size_y // 2
    left = jax.random.randint(key_x, (n, 1, 1), 0, w + (1 - size_x % 2)) - size_x // 2
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    cut = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return jnp.where(cut[..., None], 0.0, x)


def backbone_input(images: jax.Array, size: int) -> jax.Array:
    """[-1, 1] images -> [0, 1], resized to size x size (antialiased), ImageNet-normalised."""
    x = (images.astype(jnp.float32) + 1.0) / 2.0
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="linear", antialias=True)
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class BatchNormLocal(nn.Module):
    """Per-channel normalisation over virtual batches of LOCAL_BATCH samples (and all tokens),
    biased variance, eps 1e-5, affine; no running statistics. x: (N, T, C)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        n, t, c = x.shape
        groups = math.ceil(n / LOCAL_BATCH)
        if n % groups:
            raise ValueError(f"batch {n} does not split into {groups} equal virtual batches")
        g = x.astype(jnp.float32).reshape(groups, n // groups, t, c)
        mean = g.mean(axis=(1, 2), keepdims=True)
        var = g.var(axis=(1, 2), keepdims=True)
        g = ((g - mean) / jnp.sqrt(var + self.epsilon)).reshape(n, t, c)
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return (g * scale + bias).astype(x.dtype)


class _SNConv1d(nn.Module):
    """Spectrally normalised 1D conv over tokens; `circular` pads as PyTorch's circular mode."""

    features: int
    kernel_size: int = 1
    circular: bool = False

    @nn.compact
    def __call__(self, x, update_stats: bool):
        pad = self.kernel_size // 2
        if self.circular and pad:
            x = jnp.concatenate([x[:, -pad:], x, x[:, :pad]], axis=1)
        conv = nn.Conv(self.features, (self.kernel_size,), padding="VALID")
        return nn.SpectralNorm(conv, n_steps=1, epsilon=1e-12)(x, update_stats=update_stats)


class DiscriminatorHead(nn.Module):
    """One head on one hooked layer's tokens (N, T, D) -> logits (N, T):
    h1 = LReLU(BNL(SNConv_k1(x))); h2 = (LReLU(BNL(SNConv_k9,circular(h1))) + h1) / sqrt 2;
    logits = <SNConv_k1(h2) (64 channels), W_c c + b> / sqrt 64."""

    cmap_dim: int = 64

    @nn.compact
    def __call__(self, tokens, condition, update_stats: bool):
        channels = tokens.shape[-1]
        h1 = nn.leaky_relu(BatchNormLocal(name="norm1")(_SNConv1d(channels, name="conv1")(tokens, update_stats)), 0.2)
        h2 = nn.leaky_relu(BatchNormLocal(name="norm2")(_SNConv1d(channels, 9, circular=True, name="conv2")(h1, update_stats)), 0.2)
        h2 = (h2 + h1) / math.sqrt(2.0)
        out = _SNConv1d(self.cmap_dim, name="out")(h2, update_stats)
        cmap = nn.Dense(self.cmap_dim, name="condition")(condition)
        return jnp.einsum("ntk,nk->nt", out, cmap) / math.sqrt(self.cmap_dim)


class ProjectedDiscriminator(nn.Module):
    """One DiscriminatorHead per hooked backbone layer; logits concatenated to (N, sum of T)."""

    num_heads: int
    cmap_dim: int = 64

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], condition, update_stats: bool = True):
        if len(features) != self.num_heads:
            raise ValueError(f"{len(features)} feature maps for {self.num_heads} heads")
        return jnp.concatenate(
            [DiscriminatorHead(self.cmap_dim, name=f"head_{i}")(f, condition, update_stats) for i, f in enumerate(features)], axis=1
        )


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """-mean D(fake): MCM's "wgan" generator loss (its gradients are the hinge GAN's)."""
    return -jnp.mean(fake_logits)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Hinge: mean relu(1 - D(real)) + mean relu(1 + D(fake)). MCM's "wgan" loss is this minus 2."""
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def feature_gradient_penalty(
    rng: jax.Array,
    real: jax.Array,
    fake: jax.Array,
    features_fn: Callable[[jax.Array], Sequence[jax.Array]],
    logits_fn: Callable[[Sequence[jax.Array]], jax.Array],
) -> jax.Array:
    """MCM's penalty (not R1): for z = a real + (1 - a) fake (a ~ U(0, 1) per image, both already
    preprocessed), the gradient g of each head's summed logits w.r.t. its backbone features
    (treated as leaves), concatenated per image: mean_n (||g_n|| - 1)^2."""
    alpha = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
    features = [jax.lax.stop_gradient(f) for f in features_fn(alpha * real + (1.0 - alpha) * fake)]
    grads = jax.grad(lambda feats: jnp.sum(logits_fn(feats)))(features)
    flat = jnp.concatenate([g.reshape(g.shape[0], -1) for g in grads], axis=1)
    return jnp.mean(jnp.square(jnp.linalg.norm(flat, axis=1) - 1.0))


def adapt_penalty_weight(weight: float, penalty: float, steps_since_change: int, threshold: float = 100.0) -> tuple[float, int]:
    """MCM's rule: more than 500 steps since the last change and a penalty >= 100 -> weight x 5.
    Returns (weight, steps since the change)."""
    if steps_since_change > 500 and penalty >= threshold:
        return weight * 5.0, 0
    return weight, steps_since_change + 1
