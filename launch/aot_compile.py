"""Compiles the train step ahead of time for a TPU topology on this (CPU) machine and reports the
per-device memory and FLOPs, so the released-size model can be fitted to a pod before renting it.

  python launch/aot_compile.py --config configs/consisti2v_256.py --topology v5p:2x2x1 \
      --mesh fsdp=-1 --per-device-batch 1 --remat block

Needs the TPU runtime package (`pip install -e ".[tpu]"`, which brings libtpu); nothing runs on a
TPU. Prints one JSON line: memory per device in bytes (arguments, outputs, temporaries, total
live = arguments + outputs + temporaries - aliased donations), FLOPs per step (from XLA's cost
model) and the compile time. Batches carry precomputed caption embeddings (as with the frozen CLIP
tower of the released model), so a trainable caption encoder is not part of the compiled step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from jax_i2v.config_utils import dtype, load_config, unet_config
from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.unet import REMAT_POLICIES, build_unet, dummy_inputs
from jax_i2v.parallel.mesh import MESH_AXES, batch_parallel_size, create_mesh
from jax_i2v.parallel.partitioning import batch_sharding, rules_from_config
from jax_i2v.train.runtime import config_section
from jax_i2v.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from jax_i2v.train.state import abstract_train_state, state_shardings
from jax_i2v.train.step import StepConfig, compiled_flops, make_train_step, unet_loss_fn

def _mesh_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in MESH_AXES or not value.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"--mesh takes AXIS=SIZE pairs over {MESH_AXES}, got {item!r}")
        sizes[name] = int(value)
    return sizes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--topology", required=True, help="TPU topology, e.g. v5p:2x2x1 (v5p-8), v5e:4x4 (v5e-16)")
    p.add_argument("--mesh", type=_mesh_sizes, default={"fsdp": -1}, help="e.g. data=2,fsdp=-1 (default fsdp=-1)")
    p.add_argument("--per-device-batch", type=int, default=1)
    p.add_argument("--remat", choices=REMAT_POLICIES, default="none")
    p.add_argument("--frames", type=int, help="frames including the first (default: config data.frames)")
    return p.parse_args(argv)


def run(args) -> dict:
    from jax.experimental import topologies

    # An executable compiled for a topology has no client to be loaded back into: keep it out of
    # the persistent compilation cache.
    jax.config.update("jax_enable_compilation_cache", False)
    config = load_config(args.config)
    topology = topologies.get_topology_desc(topology_name=args.topology, platform="tpu")
    devices = topology.devices
    mesh = create_mesh(args.mesh, devices=devices)
    model = build_unet(unet_config(config), dtype=dtype(config.get("dtype", "bfloat16")), remat_policy=args.remat)
    cfg = model.config
    optim = config_section(config, "optim", OptimizerConfig) if "optim" in config else OptimizerConfig()
    optimizer = make_optimizer(optim)
    rules = rules_from_config(config.get("sharding_rules", ml_collections.ConfigDict()).to_dict())

    def init_params(rng):
        return model.init(rng, **dummy_inputs(cfg))["params"]

    abstract = abstract_train_state(init_params, optimizer, jax.random.key(0))
    shardings = state_shardings(abstract, optimizer, mesh, rules)
    abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)

    data = config.data
    frames = args.frames or data.frames
    batch = args.per_device_batch * batch_parallel_size(mesh)
    size, channels = data.latent_size, data.latent_channels
    shapes = {
        "latents": ((batch, frames, size, size, channels), jnp.float32),
        "text": ((batch, data.text_len, cfg.cross_attention_dim), jnp.float32),
        "frame_stride": ((batch,), jnp.float32),
    }
    batch_spec = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape), rules)) for k, (shape, dtype) in shapes.items()
    }
    replicated = NamedSharding(mesh, PartitionSpec())
    null_text = jax.ShapeDtypeStruct((data.text_len, cfg.cross_attention_dim), jnp.float32, sharding=replicated)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)

    loss_fn = unet_loss_fn(model, make_schedule(), ObjectiveConfig())
    step = make_train_step(loss_fn, optimizer, learning_rate_schedule(optim), shardings, mesh, rules, StepConfig())
    start = time.perf_counter()
    compiled = step.lower(abstract, batch_spec, null_text, rng).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    live = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes - memory.alias_size_in_bytes
    return {
        "topology": args.topology,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "per_device_batch": args.per_device_batch,
        "global_batch": batch,
        "frames": frames,
        "remat": args.remat,
        "params": int(sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "total_bytes": int(live),
        "flops_per_step": compiled_flops(compiled),
        "compile_s": round(compile_s, 2),
    }


def main(argv=None):
    print(json.dumps(run(parse_args(argv))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
