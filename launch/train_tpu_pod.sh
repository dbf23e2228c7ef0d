#!/usr/bin/env bash
# Runs launch/train.py on every worker of a multi-host Cloud TPU VM slice (same command on all).
#
#   launch/train_tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/train_tpu_pod.sh my-v5p-64 us-east5-a configs/consisti2v_256.py /mnt/shared/runs/exp1
#
# Expects:
# - a TPU VM slice created with a JAX-capable runtime image (e.g. `v2-alpha-tpuv5`), and gcloud
#   authenticated on this machine with access to it;
# - this repository at the same path on every worker ($REPO_DIR, default ~/jax_i2v) and installed
#   there with `pip install -e ".[tpu]"` (SETUP=1 runs that install on all workers first);
# - WORKDIR and the dataset directory on a file system every worker mounts (Filestore/NFS, or a
#   bucket through gcsfuse): every host writes its part of each Orbax checkpoint and reads the data.
# jax.distributed.initialize() finds the coordinator and process ids from the TPU metadata on its
# own, so no addresses are passed. On preemption the VMs receive SIGTERM: each worker saves its
# part of the checkpoint and exits; rerunning this script resumes from the newest checkpoint.
set -euo pipefail

if [ $# -lt 4 ]; then
  sed -n '2,5p' "$0"
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_DIR=${REPO_DIR:-'~/jax_i2v'}
EXTRA_ARGS=$(printf ' %q' "$@")

if [ "${SETUP:-0}" = "1" ]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "cd $REPO_DIR && python3 -m pip install -q -e '.[tpu]'"
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR && python3 launch/train.py --distributed --config=$CONFIG --workdir=$WORKDIR $EXTRA_ARGS \
    2>&1 | tee -a /tmp/jax_i2v_train.log"
