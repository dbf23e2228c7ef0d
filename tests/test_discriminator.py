"""MCM's frame discriminator pieces: DiffAugment, BatchNormLocal, spectral norm, heads, losses, penalty."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.distill.discriminator import (
    BatchNormLocal,
    ProjectedDiscriminator,
    adapt_penalty_weight,
    backbone_input,
    diff_augment,
    discriminator_loss,
    feature_gradient_penalty,
    generator_loss,
)


def test_diff_augment_shifts_with_zero_fill_and_cuts_out_a_square():
    images = jnp.ones((64, 20, 20, 3))
    out = np.asarray(diff_augment(jax.random.key(0), images))
    assert out.shape == images.shape
    zeros = (out == 0).all(-1)
    # Every image loses at least the cutout square (side int(0.2 * 20 + 0.5) = 4, fewer at borders).
    assert zeros.any(axis=(1, 2)).all()
    # Shifts are at most int(0.125 * 20 + 0.5) = 3 px: the centre 12 x 12 is never shifted out.
    centre = zeros[:, 4:16, 4:16].sum(axis=(1, 2))
    assert (centre <= 16).all()
    # Away from the zeroed pixels an image is one colour (the colour jitter is per image).
    for image, zero in zip(out[:8], zeros[:8]):
        kept = image[~zero]
        assert np.allclose(kept, kept[0], atol=1e-5)
    again = np.asarray(diff_augment(jax.random.key(0), images))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, np.asarray(diff_augment(jax.random.key(1), images)))


def test_diff_augment_policy_applies_only_the_named_parts():
    images = jax.random.uniform(jax.random.key(2), (16, 20, 20, 3), minval=-1.0, maxval=1.0)
    np.testing.assert_array_equal(np.asarray(diff_augment(jax.random.key(0), images, "")), np.asarray(images))
    # Translation alone moves pixels without changing any colour: every output pixel is an input
    # pixel of the same image or the zero fill.
    shifted = np.asarray(diff_augment(jax.random.key(0), images, "translation"))
    for image, out in zip(np.asarray(images), shifted):
        known = {tuple(p) for p in image.reshape(-1, 3)} | {(0.0, 0.0, 0.0)}
        assert all(tuple(p) in known for p in out.reshape(-1, 3))
    # The parts draw from the same keys whichever others are on: colour + translation equals the
    # full policy wherever cutout did not zero a pixel.
    full = np.asarray(diff_augment(jax.random.key(0), images))
    partial = np.asarray(diff_augment(jax.random.key(0), images, "color,translation"))
    kept = ~(full == 0).all(-1)
    np.testing.assert_allclose(full[kept], partial[kept], atol=1e-6)
    with pytest.raises(ValueError, match="colour"):
        diff_augment(jax.random.key(0), images, "colour")


def test_mcm_config_rejects_unknown_augmentations():
    from jax_i2v.distill.step import MCMConfig

    assert MCMConfig(disc_augment="").disc_augment == ""
    with pytest.raises(ValueError, match="cut"):
        MCMConfig(disc_augment="translation,cut")


def test_discriminator_condition_is_the_caption_or_one_fixed_vector():
    from jax_i2v.distill.step import MCMConfig, discriminator_condition

    captions = jax.random.normal(jax.random.key(0), (3, 4))
    np.testing.assert_array_equal(discriminator_condition(captions, MCMConfig(), repeats=2), jnp.repeat(captions, 2, axis=0))
    fixed = discriminator_condition(captions, MCMConfig(disc_condition="none"), repeats=2)
    assert fixed.shape == (6, 4)
    np.testing.assert_allclose(fixed, np.full((6, 4), 0.5))  # every image the same unit vector
    with pytest.raises(ValueError, match="disc_condition"):
        MCMConfig(disc_condition="caption")


def test_backbone_input_is_imagenet_normalised():
    white = jnp.ones((1, 8, 8, 3))
    out = backbone_input(white, 4)
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def test_batch_norm_local_normalises_each_virtual_batch_of_eight():
    x = jax.random.normal(jax.random.key(0), (16, 5, 3)) * jnp.concatenate([jnp.full((8, 1, 1), 1.0), jnp.full((8, 1, 1), 10.0)])
    x = x + jnp.concatenate([jnp.zeros((8, 1, 1)), jnp.full((8, 1, 1), 100.0)])
    norm = BatchNormLocal()
    out = norm.apply(norm.init(jax.random.key(0), x), x)
    for group in (out[:8], out[8:]):
        np.testing.assert_allclose(group.mean(axis=(0, 1)), 0.0, atol=1e-5)
        np.testing.assert_allclose(group.var(axis=(0, 1)), 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def discriminator():
    features = [jax.random.normal(jax.random.key(i), (8, 6, 16)) for i in range(2)]
    condition = jax.random.normal(jax.random.key(9), (8, 12))
    model = ProjectedDiscriminator(num_heads=2, cmap_dim=8)
    variables = model.init(jax.random.key(0), features, condition, update_stats=False)
    return model, variables, features, condition


def test_projected_discriminator_logits_and_spectral_state(discriminator):
    model, variables, features, condition = discriminator
    assert set(variables) == {"params", "batch_stats"}  # the power-iteration vectors are state, not params
    logits, updated = model.apply(variables, features, condition, update_stats=True, mutable=["batch_stats"])
    assert logits.shape == (8, 12)
    # After a few power iterations, every normalised kernel has spectral norm ~1.
    stats = updated
    for _ in range(30):
        _, stats = model.apply({"params": variables["params"], **stats}, features, condition, update_stats=True, mutable=["batch_stats"])
    kernel = variables["params"]["head_0"]["conv1"]["Conv_0"]["kernel"]
    sigma = jax.tree_util.tree_leaves({k: v for k, v in stats["batch_stats"]["head_0"]["conv1"].items()})
    true_sigma = np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    assert any(np.isclose(float(s), true_sigma, rtol=1e-3) for s in sigma if np.ndim(s) == 0)
    # The condition projects the logits: another caption embedding gives other logits.
    other = model.apply({"params": variables["params"], **stats}, features, -condition, update_stats=False)
    assert not np.allclose(other, model.apply({"params": variables["params"], **stats}, features, condition, update_stats=False))


def test_hinge_losses():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
    np.testing.assert_allclose(discriminator_loss(real, fake), (0 + 0.5) / 2 + (0 + 1.5) / 2)
    mcm_wgan = jnp.mean(jnp.maximum(-1.0, -real)) + jnp.mean(jnp.maximum(-1.0, fake))
    np.testing.assert_allclose(discriminator_loss(real, fake), mcm_wgan + 2.0, rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake), 0.75)


def test_gradient_penalty_of_a_linear_critic():
    """With identity features and logits w . f, the gradient is w for every image: (|w| - 1)^2."""
    w = jnp.array([3.0, 4.0])
    real, fake = jnp.ones((4, 2)), jnp.zeros((4, 2))
    penalty = feature_gradient_penalty(jax.random.key(0), real, fake, lambda x: [x], lambda feats: feats[0] @ w)
    np.testing.assert_allclose(penalty, (5.0 - 1.0) ** 2, rtol=1e-6)


def test_penalty_weight_grows_only_after_500_quiet_steps():
    assert adapt_penalty_weight(1e-5, 200.0, 501) == (5e-5, 0)
    assert adapt_penalty_weight(1e-5, 200.0, 500) == (1e-5, 501)
    assert adapt_penalty_weight(1e-5, 50.0, 900) == (1e-5, 901)


@pytest.mark.slow
def test_the_cpu_demo_discriminator_tells_clean_frames_from_degraded_ones():
    """configs/mcm_tiny.py's discriminator on what it is shown: clean frames against degraded ones
    (blur, noise, watermark), both through the teacher's lossy codec, without DiffAugment, with one
    fixed condition. After a short training it must sort frames it has not seen."""
    import optax

    from jax_i2v.config_utils import latent_codec, load_config
    from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
    from jax_i2v.distill.loop import build_backbone
    from jax_i2v.distill.step import MCMConfig, discriminator_condition

    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    distill, teacher = load_config(str(configs / "mcm_tiny.py")), load_config(str(configs / "tiny.py"))
    codec = latent_codec(teacher)
    scene = {k: v for k, v in teacher.data.dataset.to_dict().items() if k not in ("train_examples", "test_examples", "seed", "quality")}

    def frames(quality, videos):
        config = MovingShapesConfig(**{**scene, "num_frames": 8, "quality": quality})
        video = np.concatenate([generate_example(0, i, config)["video"][1:] for i in videos]).astype(np.float32) / 127.5 - 1
        return np.asarray(codec.decode(codec.encode(video)))

    train, held_out = range(24), range(100, 108)
    real, fake = frames("clean", train), frames("degraded", train)
    mcm = MCMConfig(disc_augment="", disc_condition="none")
    backbone, backbone_params = build_backbone(distill.backbone.to_dict(), seed=0)
    size = backbone.config.image_size
    model = ProjectedDiscriminator(num_heads=len(backbone.config.hooks))
    condition = discriminator_condition(jnp.zeros((8, 32)), mcm)

    def logits(params, stats, images, key):
        features = backbone.apply({"params": backbone_params}, backbone_input(diff_augment(key, images, mcm.disc_augment), size))
        out, updated = model.apply(
            {"params": params, "batch_stats": stats}, features, condition, update_stats=True, mutable=["batch_stats"]
        )
        return out, updated["batch_stats"]

    variables = model.init(
        jax.random.key(1),
        backbone.apply({"params": backbone_params}, backbone_input(jnp.asarray(real[:8]), size)),
        condition,
        update_stats=False,
    )
    params, stats = variables["params"], variables["batch_stats"]
    optimizer = optax.adamw(3e-3, weight_decay=0.0)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, stats, opt_state, real, fake, key):
        def loss_fn(params):
            real_logits, updated = logits(params, stats, real, key)
            fake_logits, updated = logits(params, updated, fake, key)
            return discriminator_loss(real_logits, fake_logits), updated

        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    rng = np.random.default_rng(0)
    for i in range(200):
        params, stats, opt_state = step(
            params, stats, opt_state, real[rng.integers(len(real), size=8)], fake[rng.integers(len(fake), size=8)], jax.random.key(i)
        )
    test_real, test_fake = frames("clean", held_out), frames("degraded", held_out)
    scores = lambda images: np.concatenate(
        [logits(params, stats, images[i : i + 8], jax.random.key(0))[0].mean(axis=1) for i in range(0, 56, 8)]
    )
    real_scores, fake_scores = scores(test_real), scores(test_fake)
    assert (real_scores[:, None] > fake_scores[None, :]).mean() > 0.9  # held-out pairs ranked right
