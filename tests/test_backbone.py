"""The discriminator backbone equals DINOv2 (transformers' Dinov2Model) on a tiny random config."""

import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.distill.backbone import ViT, ViTConfig, load_vit, original_from_transformers, save_vit
from launch import convert_backbone

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dinov2():
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, patch_size=4, image_size=16, layerscale_value=0.5
    )
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_hooked_tokens_equal_dinov2_intermediate_layers(tmp_path, dinov2):
    config = ViTConfig(image_size=16, patch_size=4, width=32, depth=4, heads=4, hooks=(1, 3))
    save_vit(str(tmp_path / "dino"), config, original_from_transformers({k: v.numpy() for k, v in dinov2.state_dict().items()}))
    loaded, params = load_vit(str(tmp_path / "dino"))
    assert loaded == config
    images = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    ours = ViT(loaded).apply({"params": params}, jnp.asarray(images))
    with torch.no_grad():
        hidden = dinov2(torch.from_numpy(np.moveaxis(images, -1, 1)), output_hidden_states=True).hidden_states
        expected = [dinov2.layernorm(hidden[h + 1])[:, 1:].numpy() for h in config.hooks]
    assert len(ours) == 2
    for a, b in zip(ours, expected):
        assert a.shape == (2, 16, 32) and np.abs(np.asarray(a) - b).max() <= 1e-4


def test_earlier_hooks_build_fewer_blocks(tmp_path, dinov2):
    config = ViTConfig(image_size=16, patch_size=4, width=32, depth=4, heads=4, hooks=(0, 1))
    save_vit(str(tmp_path / "dino"), config, original_from_transformers({k: v.numpy() for k, v in dinov2.state_dict().items()}))
    _, params = load_vit(str(tmp_path / "dino"))
    assert sorted(k for k in params if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
    with pytest.raises(ValueError, match="hooks"):
        ViTConfig(depth=4, hooks=(4,))


def test_converted_transformers_folder_runs_at_another_resolution(tmp_path, dinov2):
    """The CLI resizes the positions once; transformers resizes them at run time the same way."""
    dinov2.save_pretrained(tmp_path / "hf")
    convert_backbone.main([f"--transformers={tmp_path / 'hf'}", f"--out={tmp_path / 'vit'}", "--image_size=8", "--hooks=3"])
    config, params = load_vit(str(tmp_path / "vit"))
    assert (config.image_size, config.tokens, config.hooks) == (8, 4, (3,))
    images = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
    (ours,) = ViT(config).apply({"params": params}, jnp.asarray(images))
    with torch.no_grad():
        expected = dinov2(torch.from_numpy(np.moveaxis(images, -1, 1))).last_hidden_state[:, 1:].numpy()
    assert np.abs(np.asarray(ours) - expected).max() <= 1e-4
