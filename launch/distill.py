"""MCM distillation of a trained image-to-video model into a few-step student.

  python launch/distill.py --config=configs/mcm_tiny.py --workdir=runs/mcm_tiny --config.teacher=runs/tiny

Any config value can be overridden with --config.SECTION.KEY=VALUE. Writes WORKDIR/metrics.jsonl
(step, cd_loss, g_adv_loss, d_loss, gp, ...), TensorBoard events, Orbax checkpoints of the MCM
train state under WORKDIR/checkpoints, and the student (merged params, sampling with the
consistency sampler) under WORKDIR/student:

  python launch/sample.py --checkpoint runs/mcm_tiny/student --image first.png --prompt "..." --steps 4
  python launch/evaluate.py --checkpoint runs/mcm_tiny/student --num-videos 32 --seed 1

A SIGTERM saves and exits; running the same command again resumes.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import define_distributed_flags, exit_on_user_error, parse_flags_with_config, quiet_library_logs
from jax_i2v.distill.loop import distill

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/mcm_*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the student go")
_START_DISTRIBUTED = define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_library_logs()
    _START_DISTRIBUTED()
    with exit_on_user_error():
        distill(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_with_config)
