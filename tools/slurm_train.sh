#!/usr/bin/env bash
# Training under slurm (as mmseg's tools/slurm_train.sh):
#   [GPUS=8] [GPUS_PER_NODE=8] tools/slurm_train.sh PARTITION JOB_NAME CONFIG
#       [train.py ARGS]
# CPUS_PER_TASK and SRUN_ARGS are passed to srun.
#
# Preemptible, requeued jobs: submit the same command through sbatch and let
# slurm warn the job 120 s before it is stopped and requeue it, e.g.
#   sbatch -p PARTITION --nodes=1 --ntasks=8 --gres=gpu:8 \
#       --requeue --signal=B:USR1@120 --open-mode=append -o slurm-%j.out \
#       tools/slurm_train.sh PARTITION JOB_NAME CONFIG --work-dir work_dirs/x
# Inside a batch job (SLURM_JOB_ID set; REQUEUE=0 turns this off) the script
# - always passes --resume: a requeued job continues from the newest readable
#   checkpoint of its work dir (a first start trains from scratch);
# - forwards SIGUSR1 / SIGTERM (with B:, slurm signals this batch shell only)
#   to srun, which passes them to the training processes: PreemptionHook
#   saves a checkpoint at the next iteration and they exit with status 75;
# - on status 75 requeues the job (scontrol requeue), which then starts
#   again, resumes and repeats the uninterrupted run exactly.
# Use a fixed --work-dir, so that the requeued job finds its checkpoints.
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=${@:4}
PREEMPTED=75  # mmseg_dfq.engine.PREEMPTED_EXIT_CODE

# The repo root on PYTHONPATH lets an uninstalled checkout import mmseg_dfq.
export PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH
SRUN=(srun -p "${PARTITION}"
    --job-name="${JOB_NAME}"
    --gres=gpu:"${GPUS_PER_NODE}"
    --ntasks="${GPUS}"
    --ntasks-per-node="${GPUS_PER_NODE}"
    --cpus-per-task="${CPUS_PER_TASK}"
    --kill-on-bad-exit=1
    ${SRUN_ARGS}
    python -u "$(dirname "$0")/train.py" "${CONFIG}" --launcher="slurm")

if [ -z "${SLURM_JOB_ID}" ] || [ "${REQUEUE:-1}" = 0 ]; then
    exec "${SRUN[@]}" ${PY_ARGS}
fi

"${SRUN[@]}" --resume ${PY_ARGS} &
PID=$!
trap 'kill -USR1 "${PID}"' USR1
trap 'kill -TERM "${PID}"' TERM
# A trapped signal interrupts `wait`; wait again until srun has ended.
while true; do
    wait "${PID}"
    STATUS=$?
    kill -0 "${PID}" 2>/dev/null || break
done
if [ "${STATUS}" -eq "${PREEMPTED}" ]; then
    echo "preempted: checkpoint saved; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${STATUS}"
