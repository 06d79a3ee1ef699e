#!/usr/bin/env bash
# Every GPU measurement of the README's GPU table, in one run on one GPU:
#   bash tools/benchmark_gpu.sh OUT_DIR [SECONDS]
# Each step writes OUT_DIR/<step>.txt as it goes and gets what is left of the
# SECONDS budget (default 1800), so a slow step costs the later ones, not the
# whole run. STEPS="schedule losscheck" runs only those steps;
# SCHEDULE_OPTIONS adds --cfg-options to the schedule step. In priority order:
#   1. env.txt        GPU, driver, torch/CUDA versions
#   2. train.txt      DFQ MiT-b2, B16@256: eager vs fast path, fp32 vs bf16
#                     (train ms, img/s, peak memory, RDWT share, host syncs)
#   3. schedule.txt   dfq_mit-b2_fundus_d1_fast.py through the Runner on
#                     generated 800 px fundus PNGs: it/s, data-loading share,
#                     the whole schedule's time, device busy vs wall time
#   4. losscheck.txt  50 steps eager vs fast from the same weights and batch
#   5. loader.txt     main-process ms per batch: receive + pre-process, per
#                     image (mmseg) vs stacked (stack_seg_collate +
#                     BatchSegDataPreProcessor)
#   6. schedule_mmseg_data.txt  step 3 with mmseg's pseudo_collate +
#                     SegDataPreProcessor (what the stacked path saves)
#   7. ablation.txt   eager fp32 dfqhead and segformer-768 (RDWT share, cost)
#   8. paint.txt      --show-dir painting: mmseg's visualiser vs the overlay
set -u
out=${1:?usage: bash tools/benchmark_gpu.sh OUT_DIR [SECONDS]}
budget=${2:-1800}
mkdir -p "$out"
start=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
py=${PYTHON:-python3}
data=${DATA_ROOT:-/tmp/mmseg_dfq_gpu_data/fundus}

left() { echo $((budget - ($(date +%s) - start))); }

step() { # step NAME MIN_SECONDS COMMAND...
    local name=$1 min=$2
    shift 2
    case " ${STEPS:-train schedule losscheck loader schedule_mmseg_data ablation paint} " in
    *" $name "*) ;;
    *) return ;;
    esac
    local t
    t=$(left)
    if [ "$t" -lt "$min" ]; then
        echo "skipped: ${t}s left, ${min}s needed" >"$out/$name.txt"
        return
    fi
    echo "== $name (${t}s left)"
    local s=$(date +%s)
    timeout -k 5 "$t" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "exit $rc after $(($(date +%s) - s)) s" >>"$out/$name.txt"
    tail -n 40 "$out/$name.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    $py -c 'import torch, mmseg, mmengine, mmseg_dfq; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(), "| mmseg", mmseg.__version__, "mmengine", mmengine.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# 800 px fundus PNGs as in the real release, written while step 2 runs.
if [ ! -f "$data/Domain1_train.list" ]; then
    $py tools/generate_synthetic.py fundus --out "$data" --size 800 \
        --cases "${CASES:-12}" >"$out/data.txt" 2>&1 &
    gen=$!
else
    gen=
fi

step train 120 $py tools/benchmark.py --device cuda --backbones b2 \
    --batch 16 --size 256 --variants dfq --paths eager fast \
    --dtypes fp32 bf16 --warmup 5 --repeats 30 --sync-check

[ -n "$gen" ] && wait "$gen"
schedule() { # schedule NAME MIN_SECONDS [CFG_OPTION...]
    local name=$1 min=$2
    shift 2
    step "$name" "$min" $py tools/benchmark.py --device cuda --full-schedule \
        configs/dfq/dfq_mit-b2_fundus_d1_fast.py --schedule-iters 400 \
        --skip-iters 100 --epoch-iters 53 --val-images 51 --profile \
        --cfg-options model.backbone.init_cfg=None \
        train_dataloader.dataset.data_root="$data" \
        val_dataloader.dataset.data_root="$data" \
        test_dataloader.dataset.data_root="$data" "$@" ${SCHEDULE_OPTIONS:-}
}
schedule schedule 90

step losscheck 60 $py tools/benchmark.py --device cuda --backbones b2 \
    --batch 16 --size 256 --variants dfq --dtypes fp32 --loss-check 50 \
    --paths eager --repeats 3 --warmup 2 --sync-check

step loader 40 $py tools/benchmark.py --device cuda --loader \
    configs/dfq/dfq_mit-b2_fundus_d1_fast.py --warmup 4 --repeats 30 \
    --loader-gap 0.1 --cfg-options model.backbone.init_cfg=None \
    train_dataloader.dataset.data_root="$data"

schedule schedule_mmseg_data 90 train_dataloader.collate_fn.type=pseudo_collate \
    val_dataloader.collate_fn.type=pseudo_collate \
    model.data_preprocessor.type=SegDataPreProcessor

step ablation 30 $py tools/benchmark.py --device cuda --backbones b2 \
    --batch 16 --size 256 --variants dfqhead segformer-768 \
    --paths eager --dtypes fp32 --warmup 5 --repeats 30

step paint 10 $py tools/benchmark.py --paint 512 --repeats 5

echo "total $(($(date +%s) - start)) s"
