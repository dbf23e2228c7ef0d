"""Tiny random checkpoints in the Hugging Face layouts (diffusers VAE, transformers CLIP, a CLIP
BPE vocabulary, a whole ConsistI2V pipeline folder), built with the PyTorch reference classes."""

import json
import pathlib
import shutil

from tokenizers import pre_tokenizers

from jax_i2v.pipeline import MODEL_INDEX

WORDS = ("a", "red", "circle", "moves", "left", "slowly", "the", "blue", "square", "right")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TINY_VAE = dict(
    block_out_channels=[8, 16],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
    scaling_factor=0.5,
)


def write_clip_vocabulary(folder: pathlib.Path, pad_token: str = "!") -> dict:
    """A CLIP-style BPE vocabulary: every byte (alone and word-final), merges that build WORDS,
    the special tokens; pad "!" as SD-2 ships it, or EOS as SD-1 does. Returns the vocab."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens + [BOS, EOS]))}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    settings = dict(tokenizer_class="CLIPTokenizer", model_max_length=77, bos_token=BOS, eos_token=EOS, pad_token=pad_token)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return vocab


def _perturbed(module, torch, seed: int):
    """Every weight moved off its init (norm scales 1, zero biases), so a swapped one shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def tiny_vae(torch, diffusers, seed: int = 0):
    torch.manual_seed(seed)
    return _perturbed(diffusers.AutoencoderKL(**TINY_VAE), torch, seed)


def tiny_clip_text_model(torch, transformers, vocab: dict, hidden_size: int = 32, hidden_act: str = "gelu", seed: int = 0):
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab["!"],
    )
    torch.manual_seed(seed)
    return _perturbed(transformers.CLIPTextModel(config), torch, seed)


def write_tiny_pipeline(folder: pathlib.Path, unet_dir: pathlib.Path, torch, diffusers, transformers) -> pathlib.Path:
    """The released ConsistI2V's folder layout around a reference UNet folder (its latent channels
    and text width must be the tiny VAE's 4 and a multiple of 4)."""
    unet_config = json.loads((unet_dir / "config.json").read_text())
    vocab = write_clip_vocabulary(folder / "tokenizer")
    tiny_clip_text_model(torch, transformers, vocab, hidden_size=unet_config["cross_attention_dim"]).save_pretrained(
        folder / "text_encoder"
    )
    tiny_vae(torch, diffusers).save_pretrained(folder / "vae", safe_serialization=True)
    shutil.copytree(unet_dir, folder / "unet")
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))  # what save_pretrained writes too
    return folder


TINY_IMAGE_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64],
    layers_per_block=1,
    attention_head_dim=[2, 4],
    cross_attention_dim=24,
    norm_num_groups=8,
    use_linear_projection=True,
)


def tiny_image_unet(torch, diffusers, seed: int = 0):
    """An SD-2.x-style diffusers UNet2DConditionModel (linear projections, heads per block)."""
    torch.manual_seed(seed)
    return _perturbed(diffusers.UNet2DConditionModel(**TINY_IMAGE_UNET), torch, seed)


# The architecture fields of stabilityai/stable-diffusion-2-1-base's vae/ and text_encoder/
# config.json (OpenCLIP ViT-H's text tower, its penultimate of 24 layers kept: 23).
SD21_BASE_VAE = dict(
    _class_name="AutoencoderKL",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    in_channels=3,
    out_channels=3,
    act_fn="silu",
    sample_size=768,
    scaling_factor=0.18215,
)
SD21_BASE_TEXT_ENCODER = dict(
    architectures=["CLIPTextModel"],
    model_type="clip_text_model",
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def write_sd21_base_encoder_configs(folder: pathlib.Path) -> pathlib.Path:
    """SD-2.1-base's vae/config.json and text_encoder/config.json (no weights) under `folder`: what
    an ahead-of-time compile of a raw-clip step at the released size reads."""
    for name, settings in (("vae", SD21_BASE_VAE), ("text_encoder", SD21_BASE_TEXT_ENCODER)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(settings, indent=2))
    return folder
