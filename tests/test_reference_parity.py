"""The Flax UNet equals the reference PyTorch UNet, and checkpoints convert losslessly both ways."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jax_i2v.convert import (
    WEIGHTS_NAME,
    load_unet,
    params_to_state_dict,
    save_unet,
    state_dict_to_params,
)

TOLERANCE = 1e-4


@pytest.mark.parametrize("case", [0, 1])
def test_matches_reference_outputs(reference_unet, reference_cases, reference_apply, case):
    _, params = reference_unet
    inputs, expected = reference_cases[case]
    out = np.asarray(reference_apply(params, **inputs))
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= TOLERANCE


def _flat(params):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def test_params_round_trip_through_diffusers_keys_exactly(reference_unet):
    model, params = reference_unet
    state_dict = params_to_state_dict(params, model.config)
    again = state_dict_to_params(state_dict, model)
    a, b = _flat(params), _flat(again)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_export_reproduces_reference_state_dict(reference_dir, reference_unet):
    model, params = reference_unet
    original = load_file(str(reference_dir / "unet" / WEIGHTS_NAME))
    exported = params_to_state_dict(params, model.config)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert exported[key].shape == value.shape, key
        if "time_emb_proj" in key and ".conv3ds." in key or "rotary_bias" in key:
            assert not exported[key].any(), f"dead weight {key} must be exported as zeros"
        else:
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_save_and_load_folder(tmp_path, reference_unet, reference_cases, reference_apply):
    model, params = reference_unet
    save_unet(str(tmp_path / "unet"), model.config, params)
    model2, params2 = load_unet(str(tmp_path / "unet"))
    assert model2.config == model.config
    inputs, _ = reference_cases[0]
    np.testing.assert_array_equal(np.asarray(reference_apply(params, **inputs)), np.asarray(reference_apply(params2, **inputs)))
    with open(tmp_path / "unet" / "config.json") as f:
        assert json.load(f)["_class_name"] == "VideoLDMUNet3DConditionModel"


def test_loaded_rotary_freqs_are_the_checkpoints(reference_dir, reference_unet):
    """The perturbed (trained) freqs are loaded, not recomputed."""
    _, params = reference_unet
    original = load_file(str(reference_dir / "unet" / WEIGHTS_NAME))
    key = "down_blocks.0.tempo_attns.0.transformer_blocks.0.attn1.rotary_emb.freqs"
    loaded = params["down_blocks_0"]["tempo_attns_0"]["transformer_blocks_0"]["attn1"]["rotary_emb"]["freqs"]
    np.testing.assert_array_equal(np.asarray(loaded), original[key])


def _write_checkpoint(folder, reference_dir, state_dict):
    folder.mkdir()
    shutil.copy(reference_dir / "unet" / "config.json", folder / "config.json")
    save_file(state_dict, str(folder / WEIGHTS_NAME))
    return str(folder)


def test_missing_unknown_and_misshapen_keys_are_named(tmp_path, reference_dir):
    original = load_file(str(reference_dir / "unet" / WEIGHTS_NAME))
    missing_key = "up_blocks.1.tempo_attns.0.alpha"
    broken = {k: v for k, v in original.items() if k != missing_key}
    broken["down_blocks.0.resnets.0.extra_proj.weight"] = np.zeros((2, 2), np.float32)
    broken["conv_in.weight"] = np.zeros((32, 5, 3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        load_unet(_write_checkpoint(tmp_path / "broken", reference_dir, broken))
    message = str(err.value)
    assert missing_key in message
    assert "down_blocks.0.resnets.0.extra_proj.weight" in message
    assert "conv_in.weight" in message and WEIGHTS_NAME in message


def test_missing_files_are_clear_errors(tmp_path, reference_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_unet(str(tmp_path))
    (tmp_path / "unet").mkdir()
    shutil.copy(reference_dir / "unet" / "config.json", tmp_path / "unet" / "config.json")
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_unet(str(tmp_path / "unet"))
