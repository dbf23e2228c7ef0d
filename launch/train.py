"""Pretrains the video UNet.

  python launch/train.py --config=configs/tiny.py --workdir=runs/tiny --config.train.steps=500

Any config value can be overridden with --config.SECTION.KEY=VALUE. Writes WORKDIR/metrics.jsonl
(one JSON object per logged step: step, loss, lr, grad_norm, steps_per_sec, examples_per_sec,
tflops_per_sec), TensorBoard events under WORKDIR/tensorboard, Orbax checkpoints under
WORKDIR/checkpoints and, every train.sample_every steps, sample videos under WORKDIR/samples. A
SIGTERM saves and exits; running the same command again resumes. Multi-process runs (one process
per host) call jax.distributed.initialize first (see launch/train_tpu_pod.sh).
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import exit_on_user_error
from jax_i2v.config_utils import load_config
from jax_i2v.train.loop import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() (multi-process runs; on Cloud TPU it needs no other flags)"
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (clusters without auto-detection)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")
_CPU_COLLECTIVES = flags.DEFINE_bool("cpu_collectives", False, "use gloo collectives between CPU processes (testing)")
flags.mark_flags_as_required(["config", "workdir"])


def _check_override_keys(argv) -> None:
    """Unknown --config.KEY overrides, named before absl's parser reports them as a bare KeyError."""
    paths = [a.split("=", 1)[0][len("--config.") :] for a in argv if a.startswith("--config.")]
    config_files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths or not config_files:
        return
    node = None
    for path in paths:
        node = load_config(config_files[-1]) if node is None else node
        current = node
        for depth, key in enumerate(path.split(".")):
            if not hasattr(current, "keys") or key not in current:
                where = ".".join(path.split(".")[:depth]) or "the config"
                known = sorted(current.keys()) if hasattr(current, "keys") else []
                raise SystemExit(f"error: --config.{path}: {where} has no key {key!r} (known: {', '.join(known)})")
            current = current[key]


def _parse_flags(argv):
    _check_override_keys(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        raise SystemExit(f"error: {error}") from None


class _QuietLibraries(logging.Filter):
    """Drops the checkpoint and data libraries' INFO chatter (several lines per save) from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Using custom data configuration"):  # our dataset's own settings
            return False
        libraries = ("/orbax/", "/grain/", "/tensorflow_datasets/")
        return record.levelno >= logging.WARNING or not any(name in record.pathname for name in libraries)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_QuietLibraries())
    if _DISTRIBUTED.value:
        import jax

        if _CPU_COLLECTIVES.value:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    with exit_on_user_error():
        train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
