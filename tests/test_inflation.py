"""Inflating an image UNet (diffusers UNet2DConditionModel, as SD-2.1-base ships it) into the video UNet."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hf_checkpoints import TINY_IMAGE_UNET, tiny_image_unet

from jax_i2v.config_utils import load_config
from jax_i2v.convert import inflate_unet
from jax_i2v.models.config import UNetConfig
from jax_i2v.models.unet import apply_unet, build_unet, dummy_inputs
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.parallel.partitioning import params_shardings
from jax_i2v.params_io import load_for_inference

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
VIDEO = dict(
    use_temporal=True,
    n_frames=4,
    n_temp_heads=4,
    augment_temporal_attention=True,
    temp_pos_embedding="rotary",
    use_frame_stride_condition=True,
)


@pytest.fixture(scope="module")
def image_unet(tmp_path_factory):
    unet = tiny_image_unet(torch, diffusers)
    folder = tmp_path_factory.mktemp("sd") / "unet"
    unet.save_pretrained(folder, safe_serialization=True)
    return unet, folder


def _video_unet(mode: str):
    config = dataclasses.replace(
        UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_IMAGE_UNET.items()}),
        first_frame_condition_mode=mode,
        **VIDEO,
    )
    model = build_unet(config)
    fresh = model.init(jax.random.key(1), **dummy_inputs(config))["params"]
    return model, fresh


def test_inflated_video_unet_is_the_image_unet_on_every_frame(image_unet):
    unet, folder = image_unet
    model, fresh = _video_unet("none")
    params = inflate_unet(str(folder), model, fresh)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((2, 4, 8, 8, 4)).astype(np.float32)
    text = rng.standard_normal((2, 5, 24)).astype(np.float32)
    out = apply_unet(model, params, video, jnp.array([500, 20]), text, None, jnp.array([3, 1]))
    frames = torch.from_numpy(np.moveaxis(video, -1, 2).reshape(8, 4, 8, 8))
    with torch.no_grad():
        reference = unet(frames, torch.tensor([500] * 4 + [20] * 4), torch.from_numpy(np.repeat(text, 4, axis=0))).sample
    reference = np.moveaxis(reference.numpy().reshape(2, 4, 4, 8, 8), 2, -1)
    assert np.abs(np.asarray(out) - reference).max() <= TOLERANCE
    # Only the video layers kept their fresh values, and those start switched off.
    flat_fresh, flat = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (fresh, params))
    for path, value in flat.items():
        name = jax.tree_util.keystr(path)
        if "alpha" in name:
            assert float(value[0]) == 1.0, name
        if "tempo_attns" in name or "conv3ds" in name or "frame_stride" in name:
            np.testing.assert_array_equal(value, flat_fresh[path], err_msg=name)


def test_concat_mode_inflates_the_same_spatial_weights(image_unet):
    _, folder = image_unet
    inflated = [traverse_util.flatten_dict(inflate_unet(str(folder), *_video_unet(mode))) for mode in ("none", "concat")]
    spatial = [
        {path for path in flat if not any(n.startswith(("conv3ds", "tempo_attns", "frame_stride")) for n in path)} for flat in inflated
    ]
    assert spatial[0] == spatial[1] and len(spatial[0]) > 50
    for path in spatial[0]:
        np.testing.assert_array_equal(inflated[0][path], inflated[1][path])


def test_sharded_params_are_inflated_shard_by_shard(image_unet):
    """Into a state split over 8 devices, each weight lands with the sharding it had: the trainer
    never holds the inflated model whole on one device."""
    _, folder = image_unet
    model, fresh = _video_unet("none")
    mesh = create_mesh({"fsdp": 8})
    sharded = jax.device_put(fresh, params_shardings(fresh, mesh))
    inflated, expected = inflate_unet(str(folder), model, sharded), inflate_unet(str(folder), model, fresh)
    split = 0
    for (path, got), before, want in zip(
        jax.tree_util.tree_leaves_with_path(inflated), jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(expected)
    ):
        assert got.sharding == before.sharding, jax.tree_util.keystr(path)
        split += not got.sharding.is_fully_replicated
        np.testing.assert_array_equal(got, want)
    assert split > 10  # weights really split, not a replicated tree


@pytest.mark.slow
def test_training_starts_from_the_image_unet(tmp_path):
    """launch/train.py with train.init_from_image_unet: at learning rate ~0 the saved params are the
    image UNet's spatial weights with the temporal layers switched off."""
    micro = load_config(str(ROOT / "configs" / "micro.py")).unet
    spatial = dict(
        in_channels=micro.in_channels,
        out_channels=micro.out_channels,
        down_block_types=list(micro.down_block_types),
        up_block_types=list(micro.up_block_types),
        block_out_channels=list(micro.block_out_channels),
        layers_per_block=micro.layers_per_block,
        attention_head_dim=list(micro.attention_head_dim),
        cross_attention_dim=micro.cross_attention_dim,
        norm_num_groups=micro.norm_num_groups,
        use_linear_projection=True,
        sample_size=micro.sample_size,
    )
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**spatial)
    unet.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        f"--config={ROOT / 'configs' / 'micro.py'}",
        f"--workdir={workdir}",
        f"--config.data.dir={tmp_path / 'data'}",
        "--config.train.steps=1",
        "--config.tensorboard=False",
        f"--config.train.init_from_image_unet={tmp_path / 'sd' / 'unet'}",
        "--config.train.temporal_mixer_init=1.0",
        "--config.optim.learning_rate=1e-12",
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "spatial layers from" in result.stderr
    _, params = load_for_inference(str(workdir), use_ema=False)
    flat = traverse_util.flatten_dict(params["unet"])
    np.testing.assert_allclose(flat[("conv_in", "kernel")], np.transpose(unet.conv_in.weight.detach().numpy(), (2, 3, 1, 0)), atol=1e-7)
    alphas = [v for path, v in flat.items() if path[-1] == "alpha"]
    assert alphas and all(float(a[0]) == 1.0 for a in alphas)


def test_architecture_mismatch_names_the_field(tmp_path, image_unet):
    unet, folder = image_unet
    model, fresh = _video_unet("none")
    other = dataclasses.replace(model.config, cross_attention_dim=32)
    with pytest.raises(ValueError, match="cross_attention_dim: 24 there, 32 here"):
        inflate_unet(str(folder), build_unet(other), fresh)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(dict(unet.config)))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        inflate_unet(str(tmp_path / "unet"), model, fresh)
