"""Where a TPU compile's backend time goes: libtpu's per-kernel log matched to the compiled HLO.

  TPU_STDERR_LOG_LEVEL=0 TPU_MIN_LOG_LEVEL=0 TPU_VMODULE=deepsea_compiler_backend=3 \\
      python launch/aot_compile.py --config=configs/consisti2v_256.py --topology=v5p:2x2x1 \\
      --mesh=fsdp=4 --per_device_batch=1 --config.train.remat_policy=block --config.data.source=latents 2> compile.log
  python launch/aot_compile.py ... --hlo_out=step.hlo   # the same command, without the logging
  python launch/compile_kernels.py --log=compile.log --hlo=step.hlo

libtpu logs one "LLO optimizing N instructions" line per kernel it compiles; XLA names kernels
deterministically, so the names match the HLO of another compile of the same program, whose
metadata names the JAX op each kernel comes from. Prints the share of LLO instructions per part of
the step (UNet forward / backward / the rest) and per kind of op. Reads text only: no JAX.
"""

from __future__ import annotations

import collections
import re

from absl import app, flags

from jax_i2v.cli import exit_on_user_error

_LOG = flags.DEFINE_string("log", None, "libtpu stderr of a compile with TPU_VMODULE=deepsea_compiler_backend=3")
_HLO = flags.DEFINE_string("hlo", None, "compiled HLO text of the same program (aot_compile.py --hlo_out)")
flags.mark_flags_as_required(["log", "hlo"])

_KERNEL_START = re.compile(r"\[(\S+)\] LLO optimizing ([\d,]+) instructions")
_DEFINITION = re.compile(r"\s+%(\S+) = .*?op_name=\"([^\"]*)\"")


def kernel_instructions(log_lines) -> dict[str, int]:
    """Kernel name -> LLO instructions, from libtpu's backend log."""
    kernels = {}
    for line in log_lines:
        match = _KERNEL_START.search(line)
        if match:
            kernels[match.group(1)] = int(match.group(2).replace(",", ""))
    return kernels


def op_names(hlo_lines) -> dict[str, str]:
    """Instruction name -> the JAX op_name in its metadata."""
    return {m.group(1): m.group(2) for m in map(_DEFINITION.match, hlo_lines) if m}


def step_part(op_name: str) -> str:
    if "VideoUNet" not in op_name:
        return "optimizer, clipping, EMA, loss and noise"
    return "UNet backward (and rematerialised forward)" if "transpose(" in op_name else "UNet forward"


def op_kind(op_name: str) -> str:
    if "VideoUNet" not in op_name:
        return "outside the UNet"
    if "conv_general_dilated" in op_name:
        return "temporal convolutions" if "conv3ds" in op_name else "spatial convolutions"
    if "dot_general" in op_name:
        return "matmuls"
    if "norm" in op_name and "reduce" in op_name:
        return "norm statistics"
    return "other element-wise, reductions, copies"


def shares(kernels: dict[str, int], names: dict[str, str], classify) -> list[tuple[str, int, float]]:
    """(class, kernels, share of instructions), largest share first."""
    total = sum(kernels.values())
    counts, instructions = collections.Counter(), collections.Counter()
    for kernel, size in kernels.items():
        label = classify(names.get(kernel, ""))
        counts[label] += 1
        instructions[label] += size
    return [(label, counts[label], size / total) for label, size in instructions.most_common()]


def main(argv):
    del argv
    with exit_on_user_error():
        with open(_LOG.value, errors="replace") as f:
            kernels = kernel_instructions(f)
        with open(_HLO.value) as f:
            names = op_names(f)
        if not kernels:
            raise ValueError(f"no 'LLO optimizing' lines in {_LOG.value}: compile with TPU_VMODULE=deepsea_compiler_backend=3")
    unmatched = sum(kernel not in names for kernel in kernels)
    print(f"{len(kernels)} kernels, {sum(kernels.values()):,} LLO instructions; {unmatched} not found in the HLO")
    for classify in (step_part, op_kind):
        for label, count, share in shares(kernels, names, classify):
            print(f"{share * 100:5.1f}%  {count:5d} kernels  {label}")
        print()


if __name__ == "__main__":
    app.run(main)
