"""Where a compiled program's time goes, by kind of op, from a `jax.profiler` trace.

Each traced XLA op (a fusion, a dot, a convolution, ...) is looked up in the compiled HLO and
counted under the heaviest kind of work it contains: convolution > matmul > custom call (Pallas,
cuDNN) > reduction > transpose/copy > element-wise. Times are per run, summed over ops; ops that
run concurrently on a multi-threaded host add up to more than the wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax

KINDS = ("convolution", "matmul", "custom_call", "reduction", "transpose_copy", "elementwise")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = [^=]*? ([a-z][\w\-]*)\(.*$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_KIND = (
    ({"convolution"}, "convolution"),
    ({"dot"}, "matmul"),
    ({"custom-call"}, "custom_call"),
    ({"reduce", "reduce-window", "select-and-scatter"}, "reduction"),
    ({"transpose", "copy"}, "transpose_copy"),
)


def _hlo_index(hlo_text: str) -> tuple[dict[str, tuple[str, str]], dict[str, set[str]]]:
    """({instruction: (opcode, its line)}, {computation: opcodes in its body})."""
    instructions, computations, current = {}, {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("(")[0]:
            current = computations.setdefault(header.group(1), set())
            continue
        match = _INSTRUCTION.match(line)
        if match:
            instructions[match.group(1)] = (match.group(2), line)
            if current is not None:
                current.add(match.group(2))
    return instructions, computations


def _kind(opcodes: set[str]) -> str:
    for names, kind in _OP_KIND:
        if opcodes & names:
            return kind
    return "elementwise"


def classify(name: str, instructions, computations) -> str | None:
    """The kind of work of the HLO instruction `name`; None for what is not an HLO op."""
    if name not in instructions:
        return None
    opcode, line = instructions[name]
    if opcode != "fusion":
        return _kind({opcode})
    called = _CALLS.search(line)
    return _kind(computations.get(called.group(1), set()) if called else set())


def trace_events(trace_dir: str) -> list[dict]:
    """The complete ("X") events of the newest trace `jax.profiler` wrote under `trace_dir`."""
    files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    if not files:
        raise FileNotFoundError(f"no profiler trace under {trace_dir}")
    with gzip.open(files[-1]) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def op_time_breakdown(compiled, run: Callable[[], object], repeats: int = 3, trace_dir: str | None = None) -> dict:
    """Milliseconds per call of `run` (which calls `compiled`) spent in each kind of op.

    Returns {kind: ms} over KINDS and "ops_per_run", the traced ops matched to `compiled`'s HLO."""
    instructions, computations = _hlo_index(compiled.as_text())
    with tempfile.TemporaryDirectory() as scratch:
        directory = trace_dir or scratch
        jax.block_until_ready(run())  # nothing left from the warm-up in the trace
        jax.profiler.start_trace(directory)
        try:
            for _ in range(repeats):
                jax.block_until_ready(run())
        finally:
            jax.profiler.stop_trace()
        events = trace_events(directory)
    totals, ops = collections.Counter(), 0
    for event in events:
        # GPU kernels name their HLO op in args; CPU thunks are named after it.
        name = event.get("args", {}).get("hlo_op", event["name"])
        kind = classify(name, instructions, computations)
        if kind is not None:
            totals[kind] += event["dur"] / 1e3
            ops += 1
    breakdown = {kind: round(totals[kind] / repeats, 3) for kind in KINDS}
    breakdown["ops_per_run"] = ops // repeats
    return breakdown
