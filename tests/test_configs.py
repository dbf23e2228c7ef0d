"""Configs: the released model's size (from shapes only) and the diffusers config round trip."""

import json
import math
import pathlib

import numpy as np
import pytest

from jax_i2v.config_utils import load_config, unet_config
from jax_i2v.convert import param_shapes
from jax_i2v.models import UNetConfig, build_unet
from jax_i2v.models.config import DEAD_ROTARY_BIAS_BUCKETS, DEAD_TEMPORAL_TEMB_DIM

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _group(path):
    if path[0] == "frame_stride_embedding":
        return "stride"
    if any(p.startswith("conv3ds") for p in path):
        return "conv3ds"
    if any(p.startswith("tempo_attns") for p in path):
        return "tempo_attns"
    return "spatial"


def test_released_config_size_matches_reference():
    """Counts from jax.eval_shape (nothing allocated) against the spec's verified counts.

    The reference state dict also holds never-used weights that we do not materialise:
    `conv3ds.*.time_emb_proj` (C x 512 + C) and `rotary_bias` (32 x heads, two per temporal transformer).
    """
    config = unet_config(load_config(str(CONFIGS / "consisti2v_256.py")))
    shapes = param_shapes(build_unet(config))
    counts = {}
    for path, shape in shapes.items():
        counts[_group(path)] = counts.get(_group(path), 0) + int(np.prod(shape))
    conv3d_channels = [shape[0] for path, shape in shapes.items() if path[-2:] == ("conv1", "bias") and _group(path) == "conv3ds"]
    n_temporal_attn = sum(1 for path in shapes if path[-1] == "freqs")
    dead_conv3ds = sum(c * DEAD_TEMPORAL_TEMB_DIM + c for c in conv3d_channels)
    dead_rotary = n_temporal_attn * DEAD_ROTARY_BIAS_BUCKETS * config.n_temp_heads

    assert counts["spatial"] == 865_910_724  # SD-2.1-base UNet2DConditionModel
    assert counts["stride"] == 2_050_560
    assert round((counts["conv3ds"] + dead_conv3ds) / 1e6, 1) == 143.8
    assert round((counts["tempo_attns"] + dead_rotary) / 1e6, 1) == 238.2
    assert round((sum(counts.values()) + dead_conv3ds + dead_rotary) / 1e6) == 1250
    assert len(conv3d_channels) == 22 and n_temporal_attn == 2 * 15
    assert len(shapes) + 2 * len(conv3d_channels) + n_temporal_attn == 1397  # reference state-dict tensors


def test_tiny_config_is_small_and_valid():
    config = unet_config(load_config(str(CONFIGS / "tiny.py")))
    n = sum(int(np.prod(s)) for s in param_shapes(build_unet(config)).values())
    assert n < 5_000_000


def test_diffusers_config_round_trip(reference_dir):
    with open(reference_dir / "unet" / "config.json") as f:
        raw = json.load(f)
    config = UNetConfig.from_diffusers(raw)
    assert UNetConfig.from_diffusers(config.to_diffusers()) == config
    assert config.attention_head_dim == (2, 4, 4) and config.n_frames == 5


def test_unknown_or_unsupported_diffusers_keys_are_errors(reference_dir):
    with open(reference_dir / "unet" / "config.json") as f:
        raw = json.load(f)
    with pytest.raises(ValueError, match="unknown keys.*mystery_option"):
        UNetConfig.from_diffusers(dict(raw, mystery_option=1))
    with pytest.raises(ValueError, match="only_cross_attention"):
        UNetConfig.from_diffusers(dict(raw, only_cross_attention=True))


def test_missing_config_file_is_clear():
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config("nope.py")


def test_mcm_tiny_discriminator_images_follow_the_teacher_scenes_clean():
    from jax_i2v.distill.loop import image_dataset_settings

    teacher = load_config(str(CONFIGS / "tiny.py"))
    teacher.data.dataset.quality = "degraded"
    images = image_dataset_settings(load_config(str(CONFIGS / "mcm_tiny.py")).images, teacher.data)
    scene = ("num_frames", "resolution", "max_objects", "min_radius", "max_radius", "min_speed", "max_speed")
    assert {k: images[k] for k in scene} == {k: teacher.data.dataset[k] for k in scene}
    assert images["quality"] == "clean"  # MCM's high-quality images next to low-quality videos
    assert images["seed"] != teacher.data.dataset.seed  # other videos than the teacher's


def test_mcm_noises_clips_with_the_teachers_training_alpha_unless_set():
    from jax_i2v.distill.loop import mcm_config

    config, teacher = load_config(str(CONFIGS / "mcm_tiny.py")), load_config(str(CONFIGS / "tiny.py"))
    assert mcm_config(config, teacher).noise_alpha == teacher.objective.noise_alpha == 1.0
    teacher.objective.noise_alpha = 0.0
    assert mcm_config(config, teacher).noise_alpha == 0.0
    config.mcm.noise_alpha = 0.5
    assert mcm_config(config, teacher).noise_alpha == 0.5


def test_mcm_256_distils_the_released_model_into_a_rank_64_student_against_a_vit_s14(tmp_path):
    """The MCM step at the released size, from the configs alone (what aot_compile lowers)."""
    import jax
    from hf_checkpoints import write_sd21_base_encoder_configs

    from jax_i2v.distill import lora
    from jax_i2v.distill.loop import abstract_mcm_step
    from jax_i2v.parallel.mesh import create_mesh

    teacher = load_config(str(CONFIGS / "consisti2v_256.py"))
    teacher.pretrained_dir = str(write_sd21_base_encoder_configs(tmp_path))
    config = load_config(str(CONFIGS / "mcm_256.py"))
    mesh = create_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices=jax.devices()[:1])
    built, (state, batch, teacher_params, backbone_params, frozen, null_caption, _) = abstract_mcm_step(config, teacher, mesh)
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    targets = {tuple(path) for path in lora.target_paths(teacher_params)}
    # The released UNet; DINOv2 ViT-S/14 (about 22M params; 16 x 16 patches at 224 px).
    assert 1.20e9 < count(teacher_params) < 1.26e9
    assert 2.1e7 < count(backbone_params) < 2.3e7 and built.models.backbone.config.tokens == 256
    # The student trains rank-64 factors only: (fan-in x 64) + (64 x out) per adapted kernel.
    kernels = [x.shape for path, x in jax.tree_util.tree_flatten_with_path(teacher_params)[0] if tuple(k.key for k in path) in targets]
    assert count(state.student) == sum(64 * (math.prod(shape[:-1]) + shape[-1]) for shape in kernels) > 0
    assert state.target is None and state.head is not None
    assert len(state.disc) == 4  # one head per hooked block
    assert batch["video"].shape == (1, 16, 256, 256, 3) and batch["tokens"].shape == (1, 77)
    assert batch["real_images"].shape == (2, 224, 224, 3) and null_caption.shape == (77,)
    assert set(frozen) == {"vae", "text"}
