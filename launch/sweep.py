"""Expands configs x a grid of overrides into runs, trains and benchmarks each, and tabulates them.

  python launch/sweep.py --workdir=runs/ablations --grid=train.seed=0,1 --num_videos=64 --seed=1 \
      --configs configs/tiny.py configs/ablations/*.py

--configs takes the config files (comma-separated, or space-separated as the shell expands a
glob); --grid (repeatable) takes KEY=V1,V2,...; --config.KEY=VALUE overrides pass through to every
run's training.
Each run (one config file with one combination of the --grid values) is `launch/train.py` into
WORKDIR/NAME followed by `launch/evaluate.py`, whose JSON goes to WORKDIR/NAME/benchmark.json.
Runs that differ only in the `sampling` section (e.g. configs/ablations/no_frameinit.py beside
configs/tiny.py) share the first one's training and are only benchmarked with their own settings.
Runs go one after another here; `--print_commands` prints them instead (one line per run, for a
cluster scheduler). Finished runs (benchmark.json present) are skipped, so an interrupted sweep
picks up where it stopped. The table of the model's metrics (and the references) is written to
WORKDIR/results.md and WORKDIR/results.csv and printed.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shlex
import subprocess
import sys
from typing import Sequence

from absl import flags

from jax_i2v.cli import define_seed_flag, exit_on_user_error, parse_launcher_flags
from jax_i2v.config_utils import load_config
from jax_i2v.eval.consistency import METRICS
from jax_i2v.eval.synthetic_benchmark import REFERENCES
from jax_i2v.pipeline import SamplingConfig

LAUNCH = os.path.dirname(os.path.abspath(__file__))
COLUMNS = METRICS + ("fvd_proxy",)

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string("workdir", None, "where the runs' folders and the result tables go", flag_values=FLAGS)
_CONFIGS = flags.DEFINE_list("configs", None, "config files, one set of runs each", flag_values=FLAGS)
_GRID = flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,...: one run per combination (repeatable)", flag_values=FLAGS)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 64, "benchmark videos per run", lower_bound=1, flag_values=FLAGS)
_SEED = define_seed_flag("benchmark seed (held-out videos and sampling noise)", FLAGS)
_PRINT_COMMANDS = flags.DEFINE_bool("print_commands", False, "print each run's commands instead of running them", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "configs"], flag_values=FLAGS)


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid takes KEY=V1,V2,... (a config key such as train.seed), got {item!r}")
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
        raise ValueError("two runs would share a directory name; give the config files distinct names")
    return runs


def _training_identity(run) -> str:
    """What the trained model depends on: the config without `sampling`, the non-sampling overrides."""
    _, config, overrides = run
    values = load_config(config).to_dict()
    values.pop("sampling", None)
    trained = {k: v for k, v in overrides.items() if not k.startswith("sampling.")}
    return json.dumps([values, trained], sort_keys=True, default=str)


def _sampling_flags(run) -> list[str]:
    """launch/evaluate.py's --sampling.KEY=VALUE flags for the run's `sampling` section and grid."""
    _, config, overrides = run
    sampling = {k: v for k, v in (load_config(config).get("sampling") or {}).items() if v is not None}
    sampling.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("sampling.")})
    SamplingConfig().override(**{k: None for k in sampling})  # names the keys it has no field for
    return [f"--sampling.{key}={value}" for key, value in sorted(sampling.items())]


def trained_by(runs) -> dict[str, str]:
    """Run name -> name of the run whose training it uses (itself unless an earlier run trains the same model)."""
    first: dict[str, str] = {}
    return {run[0]: first.setdefault(_training_identity(run), run[0]) for run in runs}


def commands(run, workdir: str, passthrough: Sequence[str], source: str) -> list[list[str]]:
    """The run's commands; `source` is the run whose model it benchmarks (itself: train it first)."""
    name, config, overrides = run
    run_dir, model_dir = os.path.join(workdir, name), os.path.join(workdir, source)
    evaluate = [
        sys.executable,
        os.path.join(LAUNCH, "evaluate.py"),
        f"--checkpoint={model_dir}",
        "--bench=synthetic",
        f"--num_videos={_NUM_VIDEOS.value}",
        f"--seed={_SEED.value}",
        "--codec_reference",
        *_sampling_flags(run),
        f"--out={os.path.join(run_dir, 'benchmark.json')}",
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
    """Runs (or prints) the sweep for the command-line arguments `argv` (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)
    # --config.KEY=VALUE overrides are every run's training's, not this launcher's flags.
    passthrough = [a for a in args if a.startswith("--config.")]
    parse_launcher_flags(FLAGS, [a for a in args if not a.startswith("--config.")], __doc__)
    with exit_on_user_error():
        missing = [c for c in _CONFIGS.value if not os.path.isfile(c)]
        if missing:
            raise FileNotFoundError(f"config files not found: {missing}")
        runs = expand(_CONFIGS.value, parse_grid(_GRID.value))
        sources = trained_by(runs)
        for run in runs:
            _sampling_flags(run)  # a sampling key evaluate.py has no flag for fails before any run
    workdir = _WORKDIR.value
    if _PRINT_COMMANDS.value:
        for run in runs:
            print(" && ".join(shlex.join(c) for c in commands(run, workdir, passthrough, sources[run[0]])))
        return []

    os.makedirs(workdir, exist_ok=True)
    rows = []
    for index, run in enumerate(runs):
        result_path = os.path.join(workdir, run[0], "benchmark.json")
        if not os.path.isfile(result_path):
            print(f"[{index + 1}/{len(runs)}] {run[0]}", file=sys.stderr, flush=True)
            for command in commands(run, workdir, passthrough, sources[run[0]]):
                completed = subprocess.run(command)
                if completed.returncode != 0:
                    raise SystemExit(f"error: run {run[0]} failed ({shlex.join(command)} exited with {completed.returncode})")
        with open(result_path) as f:
            rows.append((run[0], json.load(f)))
    print(write_tables(workdir, *table(rows)))
    return rows


if __name__ == "__main__":
    main()
