"""What the launch scripts share."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable

# Each key of `jax_i2v.pipeline.SAMPLING_DEFAULTS`: (type, what it sets, its fallback when the
# default there is None).
_SAMPLING_FLAGS = {
    "steps": (int, "sampling steps", None),
    "text_guidance": (float, "text guidance scale", None),
    "image_guidance": (float, "first-frame guidance; > 1 switches to 3-way text+image guidance", None),
    "eta": (float, "DDIM eta: 0 deterministic, 1 DDPM-like", None),
    "noise_alpha": (float, "pyoco mixed-noise alpha of the initial noise, 0: independent frames", "the training's, else 1"),
    "fresh_noise_alpha": (float, "alpha of the noise drawn at each step (eta > 0, LCM)", "the noise alpha"),
    "frameinit": (str, "FrameInit filter, or none", None),
    "frameinit_ds": (float, "FrameInit spatial cutoff", None),
    "frameinit_dt": (float, "FrameInit temporal cutoff", None),
    "frameinit_order": (int, "FrameInit Butterworth order", None),
    "frameinit_noise_level": (int, "FrameInit noise level, per mille of the timesteps", None),
}


def sampling_flag(key: str) -> str:
    """The command-line flag of a sampling setting: --text-guidance for text_guidance."""
    return "--" + key.replace("_", "-")


def add_sampling_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, fallbacks: dict | None = None) -> None:
    """One flag per sampling setting, unset by default so that `jax_i2v.pipeline.sampling_settings`
    takes the config's `sampling` section; `fallbacks` names what an unset flag falls back to where
    it is not `SAMPLING_DEFAULTS`' value."""
    from jax_i2v.diffusion.frameinit import FILTER_TYPES
    from jax_i2v.pipeline import SAMPLING_DEFAULTS

    for key, default in SAMPLING_DEFAULTS.items():
        kind, what, none_means = _SAMPLING_FLAGS[key]
        fallback = (fallbacks or {}).get(key, none_means if default is None else default)
        choices = FILTER_TYPES + ("none",) if key == "frameinit" else None
        parser.add_argument(
            sampling_flag(key), type=kind, choices=choices, help=f"{what} (default: config sampling.{key}, else {fallback})"
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
