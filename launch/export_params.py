"""Writes the params of a training run (EMA params if kept) as a params-only export with its config.

  python launch/export_params.py --checkpoint runs/tiny --out exports/tiny [--unet_folder exports/tiny_unet]

`--checkpoint` takes a workdir (newest checkpoint) or one `WORKDIR/checkpoints/STEP` folder. The
export (`OUT/params` in Orbax format + `OUT/config.json`) is what `launch/sample.py --checkpoint`
and `jax_i2v.params_io.load_for_inference` read; it holds no optimizer state.
`--unet_folder` also writes the UNet as a diffusers `unet/` folder (config.json + safetensors).

The params are read split over all devices (an `fsdp` mesh), each process reading its shards, so
a model larger than one device or host exports with `--distributed` on every host as it trained.
"""

from __future__ import annotations

import json
import logging

import jax
from absl import app, flags

from jax_i2v.cli import define_distributed_flags, exit_on_user_error, quiet_library_logs

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training workdir or one of its checkpoints/STEP folders")
_OUT = flags.DEFINE_string("out", None, "export folder (created; an existing export is replaced)")
_EMA = flags.DEFINE_bool("ema", True, "the EMA params when the run kept them (--noema: the raw params)")
_UNET_FOLDER = flags.DEFINE_string("unet_folder", None, "also write the UNet as a diffusers unet/ folder here")
_START_DISTRIBUTED = define_distributed_flags()
flags.mark_flags_as_required(["checkpoint", "out"])


def export(checkpoint: str, out: str, use_ema: bool = True, unet_folder: str | None = None) -> dict:
    from jax_i2v.config_utils import config_from_dict, unet_config
    from jax_i2v.convert import save_unet
    from jax_i2v.parallel.mesh import create_mesh
    from jax_i2v.params_io import export_params, load_for_inference, parameter_count

    mesh = create_mesh({"fsdp": -1})
    config, params = load_for_inference(checkpoint, use_ema=use_ema, mesh=mesh)
    path = export_params(out, params, config)
    result = {"export": path, "params": parameter_count(params)}
    if unet_folder:
        unet_params = params["unet"] if isinstance(params, dict) and set(params) == {"unet", "text"} else params
        save_unet(unet_folder, unet_config(config_from_dict(config)), unet_params)
        result["unet_folder"] = unet_folder
    return result


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING)
    quiet_library_logs()
    _START_DISTRIBUTED()
    with exit_on_user_error():
        result = export(_CHECKPOINT.value, _OUT.value, _EMA.value, _UNET_FOLDER.value)
    if jax.process_index() == 0:
        print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
