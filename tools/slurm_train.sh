#!/usr/bin/env bash
# Training under slurm (as mmseg's tools/slurm_train.sh):
#   [GPUS=8] [GPUS_PER_NODE=8] tools/slurm_train.sh PARTITION JOB_NAME CONFIG
#       [train.py ARGS]
# CPUS_PER_TASK and SRUN_ARGS are passed to srun.
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=${@:4}

# The repo root on PYTHONPATH lets an uninstalled checkout import mmseg_dfq.
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    python -u "$(dirname "$0")/train.py" "${CONFIG}" --launcher="slurm" ${PY_ARGS}
