"""Compiles the trainer's own step ahead of time for a TPU topology on this (CPU) host and reports
per-device memory, FLOPs and the kernels compiled, so a pod can be sized before renting it.

  python launch/aot_compile.py --config=configs/consisti2v_256.py --topology=v5p:2x2x1 \
      --mesh=fsdp=4 --per_device_batch=1 --config.train.remat_policy=block --config.data.source=latents

The step comes from the trainer's builder (`jax_i2v.train.experiment.build_experiment`) with the
topology's devices as the mesh: the same model, kernels (`model.attention`, "auto" resolving for
TPU), state shardings, loss, optimizer, accumulation and EMA as `launch/train.py` with the same
config, at its `xla_optimization_level`. Batches are what the trainer feeds that config: latents
and caption embeddings from a latent cache (`--config.data.source=latents`), or raw uint8 clips
and token ids that the step encodes (the VAE and CLIP config.json files, no weights, must then
be where the config points).

An MCM config (one with an `mcm` section) compiles the distillation step instead, the one
`launch/distill.py` runs, for a teacher given by its experiment config (`--teacher_config`, with
--teacher_config.KEY=VALUE overrides) rather than a trained run:

  python launch/aot_compile.py --config=configs/mcm_256.py --teacher_config=configs/consisti2v_256.py \
      --topology=v5p:2x2x1 --mesh=fsdp=4 --per_device_batch=1

Needs libtpu (`pip install -e ".[tpu]"`); nothing runs on a TPU. Prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import exit_on_user_error, parse_flags_with_config
from jax_i2v.parallel.mesh import MESH_AXES

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)
_TEACHER_CONFIG = config_flags.DEFINE_config_file(
    "teacher_config", None, "an MCM config's teacher as an experiment config (configs/*.py), e.g. configs/consisti2v_256.py"
)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x1 (v5p-8), v5e:4x4 (v5e-16)")
_MESH = flags.DEFINE_string("mesh", "", "mesh axis sizes, e.g. data=2,fsdp=-1 (default: the config's mesh.ici)")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 1, "clips per device (the global batch is this x data x fsdp)")
_FRAMES = flags.DEFINE_integer("frames", None, "frames including the first (default: config data.frames)")
_HLO_OUT = flags.DEFINE_string("hlo_out", None, "also write the compiled (optimised, partitioned) HLO text here")
flags.mark_flags_as_required(["config", "topology"])

# The utilisation assumed to turn model FLOPs into a step time.
ASSUMED_MFU = 0.4


def mesh_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in MESH_AXES or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh takes AXIS=SIZE pairs over {MESH_AXES}, got {item!r}")
        sizes[name] = int(value)
    return sizes


def pallas_call_count(hlo_text: str) -> int:
    """Mosaic (Pallas TPU) kernels among the compiled program's custom calls."""
    return len(re.findall(r'custom_call_target="tpu_custom_call"', hlo_text))


def _compile(lowered_fn):
    start = time.perf_counter()
    compiled = lowered_fn().compile()
    return compiled, time.perf_counter() - start


def run(config, topology_name: str, mesh_text: str = "", per_device_batch: int = 1, frames=None, hlo_out=None, teacher_config=None) -> dict:
    import jax
    from jax.experimental import topologies

    from jax_i2v.compilation_cache import set_optimization_level
    from jax_i2v.config_utils import unet_config
    from jax_i2v.models.flops import peak_bf16_flops, train_step_flops
    from jax_i2v.parallel.mesh import batch_parallel_size, create_mesh
    from jax_i2v.params_io import parameter_count
    from jax_i2v.train.step import compiled_flops

    # An executable compiled for a topology has no client to be loaded back into: keep it out of
    # the persistent compilation cache.
    jax.config.update("jax_enable_compilation_cache", False)
    # The level the run's own config sets (the distillation's for an MCM config), as train / distill do.
    optimization_level = set_optimization_level(config.get("xla_optimization_level", ""))
    if per_device_batch < 1:
        raise ValueError(f"--per_device_batch must be >= 1, got {per_device_batch}")
    distilling = "mcm" in config
    if distilling and teacher_config is None:
        raise ValueError("an MCM config compiles for a teacher: give its experiment config as --teacher_config")
    devices = topologies.get_topology_desc(topology_name=topology_name, platform="tpu").devices
    mesh = create_mesh(mesh_sizes(mesh_text) if mesh_text else config.mesh.ici.to_dict(), devices=devices)
    batch = per_device_batch * batch_parallel_size(mesh)
    if distilling:
        from jax_i2v.distill.loop import abstract_mcm_step, apply_video_data

        apply_video_data(config, teacher_config)
        with teacher_config.unlocked():
            if frames:
                teacher_config.data.frames = frames
        built, args = abstract_mcm_step(config, teacher_config, mesh, per_device_batch)
        model, state, remat = built.models.unet, built.abstract_state, "none"
        compiled, compile_s = _compile(lambda: built.step.lower(*args))
        frames, inputs = teacher_config.data.frames, "video"
        # The analytic count covers pretraining's step; the MCM step's (five UNet passes, the
        # codec and the ViT) has none yet.
        model_flops = None
        trained = {"student": state.student, "head": state.head}
    else:
        from jax_i2v.train.experiment import build_experiment

        with config.unlocked():
            config.train.batch_size = batch
            config.train.init_from_image_unet = ""  # initial weights do not change the program
        experiment = build_experiment(config, mesh)
        frames = frames or config.data.frames
        step_inputs = experiment.abstract_inputs(batch, frames)
        compiled, compile_s = _compile(lambda: experiment.train_step.lower(experiment.sharded_abstract_state(), *step_inputs))
        model, remat = experiment.model, experiment.loop.remat_policy
        inputs = "latents" if experiment.encoders is None else "video"
        size = config.data.latent_size
        model_flops = train_step_flops(
            unet_config(config), batch=batch, frames=frames, height=size, width=size, text_len=config.data.text_len, remat=remat
        )
        trained = experiment.abstract_state.params
    hlo_text = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(hlo_text)
    memory = compiled.memory_analysis()
    live = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes - memory.alias_size_in_bytes
    device_kind = devices[0].device_kind
    result = {
        "step": "mcm" if distilling else "train",
        "topology": topology_name,
        "devices": len(devices),
        "device_kind": device_kind,
        "mesh": dict(mesh.shape),
        "per_device_batch": per_device_batch,
        "global_batch": batch,
        "frames": frames,
        "remat": remat,
        "xla_optimization_level": optimization_level or "default",
        # "video": the step encodes raw clips (VAE, frozen caption encoder); "latents": a latent cache's.
        "inputs": inputs,
        "attention": model.attention_implementation.as_dict(),
        "pallas_calls": pallas_call_count(hlo_text),
        "params": parameter_count(trained),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "total_bytes": int(live),
        "flops_per_step": compiled_flops(compiled),
        "model_flops_per_step": None if model_flops is None else int(model_flops),
    }
    if distilling:
        result["teacher_params"] = parameter_count(args[2])
    if model_flops is not None:
        step_s = model_flops / len(devices) / (ASSUMED_MFU * (peak_bf16_flops(device_kind) or float("nan")))
        result[f"step_s_at_{int(ASSUMED_MFU * 100)}pct_mfu"] = float(f"{step_s:.4g}")
        result[f"clips_per_s_per_chip_at_{int(ASSUMED_MFU * 100)}pct_mfu"] = float(f"{batch / step_s / len(devices):.4g}")
    result["compile_s"] = round(compile_s, 2)
    result["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    with exit_on_user_error():
        result = run(
            _CONFIG.value, _TOPOLOGY.value, _MESH.value, _PER_DEVICE_BATCH.value, _FRAMES.value, _HLO_OUT.value, _TEACHER_CONFIG.value
        )
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_with_config)
