"""Configs: the released model's size (from shapes only) and the diffusers config round trip."""

import json
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
