"""Writes the params of a training run (EMA params if kept) as a params-only export with its config.

  python launch/export_params.py --checkpoint runs/tiny --out exports/tiny

`--checkpoint` takes a workdir (newest checkpoint) or one `WORKDIR/checkpoints/STEP` folder. The
export (`OUT/params` in Orbax format + `OUT/config.json`) is what `launch/sample.py --checkpoint`
and `jax_i2v.train.checkpoint.load_for_inference` read; it holds no optimizer state.
"""

from __future__ import annotations

import argparse
import json

import jax

from jax_i2v.train.checkpoint import export_params, load_for_inference


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training workdir or one of its checkpoints/STEP folders")
    p.add_argument("--out", required=True, help="export folder (created; an existing export is replaced)")
    p.add_argument("--no-ema", action="store_true", help="the raw params even if EMA params were kept")
    args = p.parse_args(argv)
    config, params = load_for_inference(args.checkpoint, use_ema=not args.no_ema)
    path = export_params(args.out, params, config)
    result = {"export": path, "params": int(sum(x.size for x in jax.tree_util.tree_leaves(params)))}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
