"""The Flax CLIP text tower and BPE tokenizer equal transformers' on a tiny generated vocabulary."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import tiny_clip_text_model, write_clip_vocabulary
from safetensors.numpy import load_file, save_file

from jax_i2v.config_utils import text_conditioning
from jax_i2v.convert import CONFIG_NAME, TEXT_WEIGHTS_NAME, load_text_encoder, save_text_encoder
from jax_i2v.models.clip import CLIPTextConfig, CLIPTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
PROMPTS = [
    "a red circle moves left",
    "The BLUE square  moves right, slowly!",
    "",
    "unknown words: 3 zebras jump, caf\u00e9 na\u00efve don't <|endoftext|>",
    "a red circle moves left " * 30,  # longer than 77 tokens: truncated
]


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["sd1_pad", "sd2_pad"])
def tokenizer_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "tokenizer"
    write_clip_vocabulary(folder, request.param)
    return folder


def test_token_ids_equal_transformers(tokenizer_dir):
    reference = transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    ids = CLIPTokenizer.from_folder(str(tokenizer_dir))(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ids, np.asarray(expected))
    assert len(set(ids[0, 1:6])) == 5, "each of the five known words is one merged token"


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def text_encoder_dirs(request, tmp_path_factory):
    """(torch CLIPTextModel with random weights, text_encoder/ folder, tokenizer/ folder)."""
    root = tmp_path_factory.mktemp("pipeline")
    vocab = write_clip_vocabulary(root / "tokenizer")
    model = tiny_clip_text_model(torch, transformers, vocab, hidden_act=request.param)
    model.save_pretrained(root / "text_encoder")
    return model, root / "text_encoder", root / "tokenizer"


def _reference_outputs(model, tokenizer_dir):
    ids = torch.from_numpy(CLIPTokenizer.from_folder(str(tokenizer_dir))(PROMPTS).astype(np.int64))
    with torch.no_grad():
        out = model(ids)
    return ids.numpy(), out.last_hidden_state.numpy(), out.pooler_output.numpy()


def test_text_encoder_matches_transformers(text_encoder_dirs):
    model, text_dir, tokenizer_dir = text_encoder_dirs
    encoder = load_text_encoder(str(text_dir), str(tokenizer_dir))
    ids, hidden, pooled = _reference_outputs(model, tokenizer_dir)
    ours = encoder.encode(PROMPTS)
    assert ours.shape == (len(PROMPTS), 77, 32) and ours.dtype == np.float32
    assert np.abs(ours - hidden).max() <= TOLERANCE
    _, ours_pooled = encoder.module.apply({"params": encoder.params}, jnp.asarray(ids))
    assert np.abs(np.asarray(ours_pooled) - pooled).max() <= TOLERANCE


def test_saved_text_encoder_loads_in_transformers(tmp_path, text_encoder_dirs):
    model, text_dir, tokenizer_dir = text_encoder_dirs
    save_text_encoder(str(tmp_path / "text_encoder"), load_text_encoder(str(text_dir), str(tokenizer_dir)))
    saved = load_file(str(tmp_path / "text_encoder" / TEXT_WEIGHTS_NAME))
    assert all(key.startswith("text_model.") for key in saved), "the layout transformers 4.x (the reference's) reads"
    again = transformers.CLIPTextModel.from_pretrained(str(tmp_path / "text_encoder")).eval()
    ids = torch.from_numpy(CLIPTokenizer.from_folder(str(tokenizer_dir))(PROMPTS).astype(np.int64))
    with torch.no_grad():
        np.testing.assert_array_equal(again(ids).last_hidden_state.numpy(), model(ids).last_hidden_state.numpy())


def test_legacy_checkpoint_layout_loads(tmp_path, text_encoder_dirs):
    model, text_dir, tokenizer_dir = text_encoder_dirs
    state = {"text_model." + k: v for k, v in load_file(str(text_dir / TEXT_WEIGHTS_NAME)).items()}
    state["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    (tmp_path / "text_encoder").mkdir()
    save_file(state, str(tmp_path / "text_encoder" / TEXT_WEIGHTS_NAME))
    (tmp_path / "text_encoder" / CONFIG_NAME).write_text((text_dir / CONFIG_NAME).read_text())
    legacy = load_text_encoder(str(tmp_path / "text_encoder"), str(tokenizer_dir)).encode(PROMPTS[:2])
    np.testing.assert_array_equal(legacy, load_text_encoder(str(text_dir), str(tokenizer_dir)).encode(PROMPTS[:2]))


def test_bad_folders_name_the_file_and_key(tmp_path, text_encoder_dirs):
    _, text_dir, tokenizer_dir = text_encoder_dirs
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/{TEXT_WEIGHTS_NAME}"):
        (tmp_path / CONFIG_NAME).write_text((text_dir / CONFIG_NAME).read_text())
        load_text_encoder(str(tmp_path), str(tokenizer_dir))
    state = load_file(str(text_dir / TEXT_WEIGHTS_NAME))
    state["encoder.layers.1.mlp.fc1.weight"] = state["encoder.layers.1.mlp.fc1.weight"][:8]
    save_file(state, str(tmp_path / TEXT_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"model.safetensors does not match.*encoder\.layers\.1\.mlp\.fc1\.weight"):
        load_text_encoder(str(tmp_path), str(tokenizer_dir))
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**json.loads((text_dir / CONFIG_NAME).read_text()), "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="config.json.*hidden_act"):
        load_text_encoder(str(tmp_path), str(tokenizer_dir))


def test_config_reads_the_architecture_keys():
    sd2 = CLIPTextConfig.from_transformers(
        dict(
            model_type="clip_text_model",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            hidden_act="gelu",
            projection_dim=512,
            torch_dtype="float32",
        )
    )
    assert (sd2.num_hidden_layers, sd2.hidden_size, sd2.hidden_act) == (23, 1024, "gelu")
    assert CLIPTextConfig.from_transformers(sd2.to_transformers()) == sd2
    with pytest.raises(ValueError, match="model_type"):
        CLIPTextConfig.from_transformers({"model_type": "clip"})


def test_saved_tokenizer_gives_the_same_ids(tmp_path, tokenizer_dir):
    tokenizer = CLIPTokenizer.from_folder(str(tokenizer_dir))
    tokenizer.save(str(tmp_path / "tokenizer"))
    np.testing.assert_array_equal(CLIPTokenizer.from_folder(str(tmp_path / "tokenizer"))(PROMPTS), tokenizer(PROMPTS))
    reference = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    np.testing.assert_array_equal(tokenizer(PROMPTS), np.asarray(expected))


def test_experiment_config_conditions_on_the_clip_folders(text_encoder_dirs):
    _, text_dir, tokenizer_dir = text_encoder_dirs
    settings = dict(kind="clip", dir=str(text_dir), tokenizer_dir=str(tokenizer_dir))
    text = text_conditioning(settings, 77, 32)
    assert text.module is None  # frozen, as in the reference
    expected = load_text_encoder(str(text_dir), str(tokenizer_dir)).encode(["", "a red circle"])
    # (to float32 rounding: a batch of one sums in another order)
    np.testing.assert_allclose(text.null_caption, expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(text.encoder().encode(["a red circle"])[0], expected[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="77 x 32 text embeddings; data.text_len and the UNet's cross_attention_dim say 77 x 64"):
        text_conditioning(settings, 77, 64)
