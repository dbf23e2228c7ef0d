"""Building blocks against direct, loop-level implementations of the reference's maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.models.attention import _blocked_attention, _softmax_attention, apply_rotary, rotary_frequencies
from jax_i2v.models.layers import resize_nearest
from jax_i2v.models.transformer import first_frame_neighbours


def test_first_frame_neighbours_replicate_padding_row_major():
    rng = np.random.default_rng(0)
    frame = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    out = np.asarray(first_frame_neighbours(jnp.asarray(frame)))
    assert out.shape == (2, 3, 4, 8, 5)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for y in range(3):
        for x in range(4):
            for n, (dy, dx) in enumerate(offsets):
                yy, xx = min(max(y + dy, 0), 2), min(max(x + dx, 0), 3)
                np.testing.assert_array_equal(out[:, y, x, n], frame[:, yy, xx])


def test_rotary_rotates_interleaved_pairs_of_the_first_half():
    rng = np.random.default_rng(1)
    channels, frames = 16, 5
    x = rng.normal(size=(3, frames, channels)).astype(np.float32)
    freqs = np.asarray(rotary_frequencies(channels)) * 1.3  # perturbed, as trained freqs are
    assert freqs.shape == (channels // 4,)
    positions = np.arange(frames)
    out = np.asarray(apply_rotary(jnp.asarray(x), jnp.asarray(freqs), jnp.asarray(positions)))
    expected = x.copy()
    for p in positions:
        for i, f in enumerate(freqs):
            a, b = x[:, p, 2 * i], x[:, p, 2 * i + 1]
            c, s = np.cos(p * f), np.sin(p * f)
            expected[:, p, 2 * i], expected[:, p, 2 * i + 1] = a * c - b * s, b * c + a * s
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(out[..., channels // 2 :], x[..., channels // 2 :])
    np.testing.assert_array_equal(out[:, 0], x[:, 0])  # position 0 is the identity


@pytest.mark.parametrize("saved_probs_logits", [0, 1 << 30], ids=["recomputed", "saved_probs"])
@pytest.mark.parametrize("tq, lead_k", [(300, (2, 3)), (256, (2, 1))], ids=["ragged", "broadcast_keys"])
def test_blocked_attention_equals_materialised(tq, lead_k, saved_probs_logits):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 3, tq, 2, 8))
    k = jax.random.normal(keys[1], lead_k + (40, 2, 8))
    v = jax.random.normal(keys[2], lead_k + (40, 2, 8))

    def blocked(q, k, v):  # these sizes are below the materialising threshold: force the blocks
        return _blocked_attention(q, k, v, materialise_logits=0, saved_probs_logits=saved_probs_logits)

    np.testing.assert_allclose(blocked(q, k, v), _softmax_attention(q, k, v), atol=1e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    g_blocked = jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
    g_full = jax.grad(loss(_softmax_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_blocked, g_full):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_attention_gradients_equal_autodiff(dtype):
    """The written-out backward pass of `_softmax_attention`, broadcast keys included."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (2, 3, 20, 2, 8)).astype(dtype)
    k = jax.random.normal(keys[1], (2, 1, 12, 2, 8)).astype(dtype)
    v = jax.random.normal(keys[2], (2, 1, 12, 2, 8)).astype(dtype)

    def autodiffed(q, k, v):
        logits = jnp.einsum("...qnd,...knd->...nqk", q * jnp.asarray(8**-0.5, dtype), k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
        return jnp.einsum("...nqk,...knd->...qnd", weights, v)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))

    ours = jax.grad(loss(_softmax_attention), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(loss(autodiffed), argnums=(0, 1, 2))(q, k, v)
    tol = dict(atol=1e-5) if dtype == jnp.float32 else dict(atol=3e-2, rtol=2e-2)  # bf16: an ulp or so
    for a, b in zip(ours, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


@pytest.mark.parametrize("size", [(8, 12), (7, 5)])
def test_resize_nearest_matches_torch_index_rule(size):
    x = np.arange(4 * 6, dtype=np.float32).reshape(1, 4, 6, 1)
    out = np.asarray(resize_nearest(jnp.asarray(x), *size))
    rows = (np.arange(size[0]) * 4) // size[0]
    cols = (np.arange(size[1]) * 6) // size[1]
    np.testing.assert_array_equal(out[0, :, :, 0], x[0][np.ix_(rows, cols)][..., 0])
