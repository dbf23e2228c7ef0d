"""Expands configs x a grid of overrides into runs, trains and benchmarks each, and tabulates them.

  python launch/sweep.py --workdir runs/ablations \
      --configs configs/tiny.py configs/ablations/*.py --grid train.seed=0,1 --num-videos 64 --seed 1

Each run (one config file with one combination of the --grid values) is `launch/train.py` into
WORKDIR/NAME followed by `launch/evaluate.py`, whose JSON goes to WORKDIR/NAME/benchmark.json.
Runs that differ only in the `sampling` section (e.g. configs/ablations/no_frameinit.py beside
configs/tiny.py) share the first one's training and are only benchmarked with their own settings.
Runs go one after another here; `--print-commands` prints them instead (one line per run, for a
cluster scheduler). Finished runs (benchmark.json present) are skipped, so an interrupted sweep
picks up where it stopped. The table of the model's metrics (and the references) is written to
WORKDIR/results.md and WORKDIR/results.csv and printed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import subprocess
import sys
from typing import Sequence

from jax_i2v.cli import sampling_flag
from jax_i2v.config_utils import load_config
from jax_i2v.eval.consistency import METRICS
from jax_i2v.eval.synthetic_benchmark import REFERENCES
from jax_i2v.pipeline import SAMPLING_DEFAULTS

LAUNCH = os.path.dirname(os.path.abspath(__file__))
# A config's `sampling` keys and the launch/evaluate.py flags that set them.
SAMPLING_FLAGS = {key: sampling_flag(key) for key in SAMPLING_DEFAULTS}
COLUMNS = METRICS + ("fvd_proxy",)


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"error: --grid takes KEY=V1,V2,... (a config key such as train.seed), got {item!r}")
        grid.append((key, values.split(",")))
    return grid


def expand(configs: Sequence[str], grid: list[tuple[str, list[str]]]) -> list[tuple[str, str, dict[str, str]]]:
    """(name, config file, overrides) for every config x grid combination."""
    runs = []
    keys = [key for key, _ in grid]
    for config in configs:
        stem = os.path.splitext(os.path.basename(config))[0]
        for values in itertools.product(*[values for _, values in grid]):
            overrides = dict(zip(keys, values))
            name = "_".join([stem] + [f"{k.split('.')[-1]}{v}" for k, v in overrides.items()])
            runs.append((name, config, overrides))
    names = [name for name, _, _ in runs]
    if len(set(names)) != len(names):
        raise SystemExit("error: two runs would share a directory name; give the config files distinct names")
    return runs


def _training_identity(run) -> str:
    """What the trained model depends on: the config without `sampling`, the non-sampling overrides."""
    _, config, overrides = run
    values = load_config(config).to_dict()
    values.pop("sampling", None)
    trained = {k: v for k, v in overrides.items() if not k.startswith("sampling.")}
    return json.dumps([values, trained], sort_keys=True, default=str)


def _sampling_flags(run) -> list[str]:
    _, config, overrides = run
    sampling = dict(load_config(config).get("sampling", {}))
    sampling.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("sampling.")})
    unknown = set(sampling) - set(SAMPLING_FLAGS)
    if unknown:
        raise SystemExit(f"error: {run[0]}: launch/evaluate.py has no flag for sampling keys {sorted(unknown)}")
    return [item for key, value in sorted(sampling.items()) for item in (SAMPLING_FLAGS[key], str(value))]


def trained_by(runs) -> dict[str, str]:
    """Run name -> name of the run whose training it uses (itself unless an earlier run trains the same model)."""
    first: dict[str, str] = {}
    return {run[0]: first.setdefault(_training_identity(run), run[0]) for run in runs}


def commands(run, workdir: str, args, passthrough: Sequence[str], source: str) -> list[list[str]]:
    """The run's commands; `source` is the run whose model it benchmarks (itself: train it first)."""
    name, config, overrides = run
    run_dir, model_dir = os.path.join(workdir, name), os.path.join(workdir, source)
    evaluate = [
        sys.executable,
        os.path.join(LAUNCH, "evaluate.py"),
        "--checkpoint",
        model_dir,
        "--bench",
        "synthetic",
        "--num-videos",
        str(args.num_videos),
        "--seed",
        str(args.seed),
        "--codec-reference",
        *_sampling_flags(run),
        "--out",
        os.path.join(run_dir, "benchmark.json"),
    ]
    if source != name:
        return [["mkdir", "-p", run_dir], evaluate]
    train = [sys.executable, os.path.join(LAUNCH, "train.py"), f"--config={config}", f"--workdir={run_dir}"]
    train += [f"--config.{k}={v}" for k, v in overrides.items()] + list(passthrough)
    return [train, evaluate]


def table(rows: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """One line per run (the model's scores), then the references (ground truth, static, ground
    truth through the codec), which are the same for every run of one benchmark seed and codec."""
    header = ["run", "model"] + list(COLUMNS)

    def line(name, model, scores):
        return [name, model] + [f"{scores[c]:.4g}" for c in COLUMNS]

    lines = [line(name, "model", result["model"]) for name, result in rows]
    if rows:
        lines += [line("-", reference, rows[0][1][reference]) for reference in REFERENCES if reference in rows[0][1]]
    return header, lines


def write_tables(workdir: str, header: list[str], lines: list[list[str]]) -> str:
    markdown = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(line) + " |" for line in lines]
    )
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown + "\n")
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header] + lines)
    return markdown


def main(argv=None) -> list[tuple[str, dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--configs", nargs="+", required=True, help="config files, one set of runs each")
    p.add_argument("--grid", nargs="*", default=[], help="KEY=V1,V2,...: one run per combination")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=1, help="benchmark seed (held-out videos and sampling noise)")
    p.add_argument("--print-commands", action="store_true", help="print each run's commands instead of running them")
    args, passthrough = p.parse_known_args(argv)
    bad = [a for a in passthrough if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognised arguments {bad} (only --config.KEY=VALUE overrides pass through to every run)")
    missing = [c for c in args.configs if not os.path.isfile(c)]
    if missing:
        p.error(f"config files not found: {missing}")
    runs = expand(args.configs, parse_grid(args.grid))
    sources = trained_by(runs)
    if args.print_commands:
        for run in runs:
            print(" && ".join(shlex.join(c) for c in commands(run, args.workdir, args, passthrough, sources[run[0]])))
        return []

    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for index, run in enumerate(runs):
        result_path = os.path.join(args.workdir, run[0], "benchmark.json")
        if not os.path.isfile(result_path):
            print(f"[{index + 1}/{len(runs)}] {run[0]}", file=sys.stderr, flush=True)
            for command in commands(run, args.workdir, args, passthrough, sources[run[0]]):
                completed = subprocess.run(command)
                if completed.returncode != 0:
                    raise SystemExit(f"error: run {run[0]} failed ({shlex.join(command)} exited with {completed.returncode})")
        with open(result_path) as f:
            rows.append((run[0], json.load(f)))
    print(write_tables(args.workdir, *table(rows)))
    return rows


if __name__ == "__main__":
    main()
