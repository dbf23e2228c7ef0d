"""What the launch scripts share."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import unittest.mock
from typing import Callable

from absl import flags


def define_sampling_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Callable[[], dict]:
    """One --sampling.KEY flag per `jax_i2v.pipeline.SamplingConfig` field, unset by default so
    that the config's `sampling` section and the dataclass's defaults fill what is not given;
    returns the function giving the flags set, {key: value}."""
    import dataclasses
    import typing

    from jax_i2v.pipeline.sampling_config import FRAMEINIT_CHOICES, SAMPLERS, SamplingConfig

    hints = typing.get_type_hints(SamplingConfig)
    choices = {"sampler": SAMPLERS, "frameinit": FRAMEINIT_CHOICES}
    names = []
    for field in dataclasses.fields(SamplingConfig):
        name, kind = f"sampling.{field.name}", typing.get_args(hints[field.name])[:1] or (hints[field.name],)
        help_text = f"{field.metadata['help']} (default: the config's sampling.{field.name}, else {field.default})"
        if field.name in choices:
            flags.DEFINE_enum(name, None, choices[field.name], help_text, flag_values=flag_values)
        elif kind[0] is int:
            flags.DEFINE_integer(name, None, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_float(name, None, help_text, flag_values=flag_values)
        names.append(field.name)

    def given() -> dict:
        return {key: flag_values[f"sampling.{key}"].value for key in names if flag_values[f"sampling.{key}"].present}

    return given


def define_compilation_cache_flag(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """--compilation_cache: JAX's persistent compilation cache of the sampling launchers."""
    from jax_i2v.compilation_cache import user_cache_dir

    return flags.DEFINE_string(
        "compilation_cache",
        "",
        f"JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else {user_cache_dir()}; none: off)",
        flag_values=flag_values,
    )


def define_distributed_flags() -> Callable[[], None]:
    """The multi-process flags of the run launchers (train.py, distill.py); returns the function
    that starts JAX's distributed runtime from them (a no-op without --distributed)."""
    from absl import flags

    distributed = flags.DEFINE_bool(
        "distributed", False, "call jax.distributed.initialize() (one process per host; on Cloud TPU it needs no other flags)"
    )
    coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (clusters without auto-detection)")
    num_processes = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
    process_id = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")
    cpu_collectives = flags.DEFINE_bool("cpu_collectives", False, "gloo collectives between CPU processes (tests, CPU clusters)")

    def initialize() -> None:
        if not distributed.value:
            return
        import jax

        if cpu_collectives.value:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator.value, num_processes.value, process_id.value)

    return initialize


@contextlib.contextmanager
def exit_on_user_error():
    """Bad input (ValueError, FileNotFoundError, FileExistsError) ends the program with `error: ...` on stderr and
    exit status 2, like argparse, instead of a traceback; a `RunError` likewise, with status 1."""
    from jax_i2v.train.runtime import RunError

    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def _check_override_keys(argv) -> None:
    """Unknown --config.KEY overrides, named before absl's parser reports them as a bare KeyError."""
    paths = [a.split("=", 1)[0][len("--config.") :] for a in argv if a.startswith("--config.")]
    config_files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths or not config_files:
        return
    from jax_i2v.config_utils import load_config

    node = load_config(config_files[-1])
    for path in paths:
        current = node
        for depth, key in enumerate(path.split(".")):
            if not hasattr(current, "keys") or key not in current:
                where = ".".join(path.split(".")[:depth]) or "the config"
                known = sorted(current.keys()) if hasattr(current, "keys") else []
                raise ValueError(f"--config.{path}: {where} has no key {key!r} (known: {', '.join(known)})")
            current = current[key]


def parse_flags_with_config(argv):
    """absl's flag parsing for scripts with an ml_collections --config: unknown --config.KEY
    overrides and other flag errors end the program with `error: ...` (pass as app.run's flags_parser)."""
    from absl import flags

    try:
        _check_config_files(argv)
        _check_override_keys(argv)
        return flags.FLAGS(argv)
    except (flags.Error, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _check_config_files(argv) -> None:
    for arg in argv:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]  # config_flags' FILE:ARGUMENT form
            if not os.path.isfile(path):
                raise ValueError(f"--config: no config file at {path}")


# Warnings libraries give about how this code calls them, which no user can act on: Orbax reading a
# run's params read-only and skipping the data-iterator item; our datasets' builder configs.
_UNACTIONABLE = (
    "read_only=True",
    "Given directory is read only",
    "was found in the checkpoint, but could not be restored",
    "Using custom data configuration",
)


class _QuietLibraries(logging.Filter):
    """Drops the checkpoint and data libraries' INFO chatter (several lines per save) and their
    warnings about our own calls from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _UNACTIONABLE):
            return False
        libraries = ("/orbax/", "/grain/", "/tensorflow_datasets/")
        return record.levelno >= logging.WARNING or not any(name in record.pathname for name in libraries)


def quiet_library_logs() -> None:
    """Applies the filter to the root and absl log handlers (call after logging.basicConfig)."""
    quiet = _QuietLibraries()
    logging.getLogger("absl").addFilter(quiet)  # also when no handler is set up (Python's last-resort one)
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(quiet)


# Launchers that tests call in-process (benchmark, convert_backbone, build_dataset, ...) keep their
# flags in a registry of their own rather than absl's global one: tests import several launchers
# into one process, where flags that share a name (--seed, --out, --frames) would collide, and each
# call of their main() starts again from the defaults.


class _IntegerListParser(flags.ListParser):
    """Comma-separated integers: 10,50,999."""

    def parse(self, argument):
        values = super().parse(argument)
        try:
            return [int(value) for value in values]
        except ValueError:
            raise ValueError(f"expected comma-separated integers, got {argument!r}") from None

    def flag_type(self) -> str:
        return "list of integers"


def define_integer_list(name: str, default, help: str, flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> flags.FlagHolder:
    """A flag of comma-separated integers (absl has lists of strings only)."""
    return flags.DEFINE(
        _IntegerListParser(), name, default, help, flag_values=flag_values, serializer=flags.CsvListSerializer(","), **kwargs
    )


def define_attention_flag(flag_values: flags.FlagValues = flags.FLAGS, fallback: str = "auto") -> flags.FlagHolder:
    """--attention: the attention kernels; unset means `fallback`."""
    from jax_i2v.models.attention import IMPLEMENTATIONS

    return flags.DEFINE_enum("attention", None, IMPLEMENTATIONS, f"attention kernels (default: {fallback})", flag_values=flag_values)


def define_seed_flag(what: str, flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """--seed (default 0); `what` says what it picks."""
    return flags.DEFINE_integer("seed", 0, what, flag_values=flag_values)


def define_trained_run_flags(flag_values: flags.FlagValues = flags.FLAGS) -> tuple[flags.FlagHolder, flags.FlagHolder, flags.FlagHolder]:
    """--checkpoint (required), --ema and --config of a launcher that reads a trained model: the
    config file's `data` section (with any --config.KEY=VALUE overrides) replaces the run's saved
    one, e.g. where its dataset has moved."""
    from ml_collections import config_flags

    checkpoint = flags.DEFINE_string(
        "checkpoint", None, "training workdir, one of its checkpoints/STEP folders or a params export", flag_values=flag_values
    )
    ema = flags.DEFINE_bool("ema", True, "the EMA params when the run kept them (--noema: the raw params)", flag_values=flag_values)
    config = config_flags.DEFINE_config_file(
        "config", None, "config file (configs/*.py) whose data section replaces the run's", flag_values=flag_values
    )
    flags.mark_flag_as_required("checkpoint", flag_values=flag_values)
    return checkpoint, ema, config


def _current_spellings(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """Command lines written for the launchers' earlier argparse flags still parse: --latent-hw 32 32
    reads as --latent_hw=32,32 and --no-ema as --noema. A list flag takes the values that follow it
    up to the next flag."""
    known = set(flag_values)
    rewritten, index = [argv[0]], 1
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            rewritten += argv[index - 1 :]
            break
        if not arg.startswith("--") or arg.startswith("--config."):
            rewritten.append(arg)
            continue
        written, equals, value = arg[2:].partition("=")
        name = written.replace("-", "_")
        if name.startswith("no_") and name[3:] in known and isinstance(flag_values[name[3:]], flags.BooleanFlag):
            name = "no" + name[3:]
        if name not in known and not (name.startswith("no") and name[2:] in known):
            rewritten.append(arg)  # absl names the unknown flag
            continue
        if not equals and name in known and isinstance(flag_values[name].parser, flags.ListParser):
            values = []
            while index < len(argv) and not argv[index].startswith("-"):
                values.append(argv[index])
                index += 1
            rewritten.append(f"--{name}={','.join(values)}")
            continue
        rewritten.append(f"--{name}{equals}{value}")
    return rewritten


def parse_launcher_flags(flag_values: flags.FlagValues, args: list[str] | None = None, usage: str = "") -> None:
    """Parses the command-line arguments `args` (default: sys.argv[1:]) into a launcher's own flag
    registry, from its defaults. --help prints `usage` and the flags; bad flags, a missing config
    file, unknown --config.KEY overrides and stray arguments end the program with `error: ...` and
    status 2."""
    argv = [sys.argv[0], *(sys.argv[1:] if args is None else args)]
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(f"{usage.strip()}\n\nflags:\n{flag_values.get_help()}")
        sys.exit(0)
    flag_values.unparse_flags()
    for name in [name for name in flag_values if name.startswith("config.")]:
        delattr(flag_values, name)  # an earlier parse's --config.KEY overrides; config_flags defines them anew
    try:
        _check_config_files(argv)
        _check_override_keys(argv)
        current = _current_spellings(flag_values, argv)
        with unittest.mock.patch.object(sys, "argv", current):  # where config_flags looks for --config.KEY overrides
            stray = flag_values(current)[1:]
        if stray:
            raise ValueError(f"unexpected arguments: {' '.join(stray)}")
    except (flags.Error, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's own (logging) flags keep their defaults, without a warning
