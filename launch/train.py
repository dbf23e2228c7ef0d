"""Pretrains the video UNet.

  python launch/train.py --config=configs/tiny.py --workdir=runs/tiny --config.train.steps=500

Any config value can be overridden with --config.SECTION.KEY=VALUE. Writes WORKDIR/metrics.jsonl
(one JSON object per logged step: step, loss, lr, grad_norm, steps_per_sec, examples_per_sec,
tflops_per_sec), TensorBoard events under WORKDIR/tensorboard, Orbax checkpoints under
WORKDIR/checkpoints and, every train.sample_every steps, sample videos under WORKDIR/samples. A
SIGTERM saves and exits; running the same command again resumes. Multi-process runs (one process
per host) call jax.distributed.initialize first (see launch/train_tpu_pod.sh).
Compiled programs are kept in WORKDIR/compilation_cache (config key compilation_cache_dir), so a
restart skips compiling; each start's first metrics record has compile_s, the train step's.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import define_distributed_flags, exit_on_user_error, parse_flags_with_config, quiet_library_logs
from jax_i2v.train.loop import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")
_START_DISTRIBUTED = define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_library_logs()
    _START_DISTRIBUTED()
    with exit_on_user_error():
        train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_with_config)
