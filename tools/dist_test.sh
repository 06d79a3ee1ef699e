#!/usr/bin/env bash
# Distributed testing with torchrun (as mmseg's tools/dist_test.sh):
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py ARGS]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# On a CPU-only host GPUS is the number of processes (gloo backend).
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

# The repo root on PYTHONPATH lets an uninstalled checkout import mmseg_dfq.
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
torchrun \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
