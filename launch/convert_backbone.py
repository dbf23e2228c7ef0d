"""Converts DINOv2 weights into a discriminator backbone folder (config.json + model.safetensors).

  python launch/convert_backbone.py --transformers /data/dinov2-small --out weights/dinov2_vits14
  python launch/convert_backbone.py --pth dinov2_vits14_pretrain.pth --out weights/dinov2_vits14

`--transformers` reads a transformers Dinov2Model folder (facebook/dinov2-small); `--pth` the
original checkpoint (needs torch). The position embeddings are resized once, here, to the grid of
`--image-size` (MCM's discriminator sees 224 x 224: 16 x 16 patches) with the bicubic resize
transformers applies at run time, so the JAX model never resizes them. Prints the folder as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file

from jax_i2v.cli import exit_on_user_error
from jax_i2v.distill.backbone import ViTConfig, original_from_transformers, save_vit


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--transformers", help="folder with config.json + model.safetensors of a Dinov2Model")
    source.add_argument("--pth", help="original DINOv2 checkpoint, e.g. dinov2_vits14_pretrain.pth (needs torch)")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--hooks", type=int, nargs="+", default=[2, 5, 8, 11])
    p.add_argument("--patch-size", type=int, default=14, help="with --pth (the checkpoint does not say)")
    p.add_argument("--heads", type=int, default=6, help="with --pth (ViT-S: 6)")
    return p.parse_args(argv)


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


def run(args) -> dict:
    if args.transformers:
        with open(os.path.join(args.transformers, "config.json")) as f:
            hf = json.load(f)
        state_dict = original_from_transformers(load_file(os.path.join(args.transformers, "model.safetensors")))
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

        state_dict = {k: v.numpy() for k, v in torch.load(args.pth, map_location="cpu", weights_only=True).items() if k != "mask_token"}
        width = state_dict["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        settings = dict(
            patch_size=args.patch_size,
            width=width,
            depth=depth,
            heads=args.heads,
            mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        )
    config = ViTConfig(image_size=args.image_size, hooks=tuple(args.hooks), **settings)
    state_dict["pos_embed"] = resize_positions(state_dict["pos_embed"], args.image_size // config.patch_size)
    save_vit(args.out, config, state_dict)
    return {"out": args.out, "config": dataclasses.asdict(config)}


def main(argv=None) -> dict:
    with exit_on_user_error():
        result = run(parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
