"""Converts DINOv2 weights into a discriminator backbone folder (config.json + model.safetensors).

  python launch/convert_backbone.py --transformers=/data/dinov2-small --out=weights/dinov2_vits14
  python launch/convert_backbone.py --pth=dinov2_vits14_pretrain.pth --out=weights/dinov2_vits14

`--transformers` reads a transformers Dinov2Model folder (facebook/dinov2-small); `--pth` the
original checkpoint (needs torch). The position embeddings are resized once, here, to the grid of
`--image_size` (MCM's discriminator sees 224 x 224: 16 x 16 patches) with the bicubic resize
transformers applies at run time, so the JAX model never resizes them. Prints the folder as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from absl import flags
from safetensors.numpy import load_file

from jax_i2v.cli import define_integer_list, exit_on_user_error, parse_launcher_flags
from jax_i2v.distill.backbone import ViTConfig, original_from_transformers, save_vit

FLAGS = flags.FlagValues()
_TRANSFORMERS = flags.DEFINE_string("transformers", None, "folder with config.json + model.safetensors of a Dinov2Model", flag_values=FLAGS)
_PTH = flags.DEFINE_string("pth", None, "original DINOv2 checkpoint, e.g. dinov2_vits14_pretrain.pth (needs torch)", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "the backbone folder to write", flag_values=FLAGS)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "input size the position embeddings are resized to", lower_bound=1, flag_values=FLAGS)
_HOOKS = define_integer_list("hooks", [2, 5, 8, 11], "blocks whose outputs the discriminator heads read", flag_values=FLAGS)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 14, "with --pth (the checkpoint does not say)", flag_values=FLAGS)
_HEADS = flags.DEFINE_integer("heads", 6, "with --pth (ViT-S: 6)", flag_values=FLAGS)
flags.mark_flag_as_required("out", flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["transformers", "pth"], required=True, flag_values=FLAGS)


def resize_positions(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): bicubic, align_corners=False, as transformers."""
    import torch

    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    g = math.isqrt(patches.shape[1])
    if g == grid:
        return pos_embed
    t = torch.from_numpy(patches.reshape(1, g, g, -1)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    return np.concatenate([cls, t.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).numpy()], axis=1)


def convert(
    out: str,
    transformers: str | None = None,
    pth: str | None = None,
    image_size: int = 224,
    hooks=(2, 5, 8, 11),
    patch_size: int = 14,
    heads: int = 6,
) -> dict:
    """Writes the backbone folder `out` from a transformers folder or an original checkpoint."""
    if transformers:
        with open(os.path.join(transformers, "config.json")) as f:
            hf = json.load(f)
        state_dict = original_from_transformers(load_file(os.path.join(transformers, "model.safetensors")))
        settings = dict(
            patch_size=hf["patch_size"],
            width=hf["hidden_size"],
            depth=hf["num_hidden_layers"],
            heads=hf["num_attention_heads"],
            mlp_ratio=hf.get("mlp_ratio", 4.0),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
        )
    else:
        import torch

        state_dict = {k: v.numpy() for k, v in torch.load(pth, map_location="cpu", weights_only=True).items() if k != "mask_token"}
        width = state_dict["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        settings = dict(
            patch_size=patch_size,
            width=width,
            depth=depth,
            heads=heads,
            mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        )
    config = ViTConfig(image_size=image_size, hooks=tuple(hooks), **settings)
    state_dict["pos_embed"] = resize_positions(state_dict["pos_embed"], image_size // config.patch_size)
    save_vit(out, config, state_dict)
    return {"out": out, "config": dataclasses.asdict(config)}


def main(argv=None) -> dict:
    """Converts for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    with exit_on_user_error():
        result = convert(_OUT.value, _TRANSFORMERS.value, _PTH.value, _IMAGE_SIZE.value, _HOOKS.value, _PATCH_SIZE.value, _HEADS.value)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
