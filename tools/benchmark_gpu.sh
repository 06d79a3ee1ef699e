#!/usr/bin/env bash
# Every GPU measurement of the README's GPU table, in one run on one GPU:
#   bash tools/benchmark_gpu.sh OUT_DIR [SECONDS]
# Each step writes OUT_DIR/<step>.txt as it goes and gets what is left of the
# SECONDS budget (default 1800), so a slow step costs the later ones, not the
# whole run. STEPS="schedule losscheck" runs only those steps;
# SCHEDULE_OPTIONS adds --cfg-options to the schedule step; TRAIN_PATHS and
# TRAIN_DTYPES narrow step 2 (default "eager fast", "fp32 bf16": each fast
# path compiles for about 2 minutes on a GPU). In priority order:
#   1. env.txt        GPU, driver, torch/CUDA versions
#   2. train.txt      DFQ MiT-b2, B16@256: eager vs fast path, fp32 vs bf16
#                     (train ms, img/s, peak memory, RDWT share, host syncs)
#   3. losscheck.txt  50 steps eager vs fast from the same weights and batch
#   4. schedule.txt   dfq_mit-b2_fundus_d1_fast.py through the Runner on
#                     generated 800 px fundus PNGs: it/s, data-loading share,
#                     the whole schedule's time, device busy vs wall time,
#                     host syncs of one whole Runner iteration
#   5. loader.txt     main-process ms per batch: receive + pre-process, per
#                     image (mmseg) vs stacked (stack_seg_collate +
#                     BatchSegDataPreProcessor), masks int64 vs uint8
#   6. schedule_mmseg_data.txt  step 4 with mmseg's pseudo_collate +
#                     SegDataPreProcessor (what the stacked path saves)
#   7. schedule_switch.txt  step 4 with a 1 ms thread switch interval
#                     (does the pin-memory thread wait for the GIL?)
#   7b. schedule_fs.txt  step 4 with file_system tensor sharing (no socket
#                     round trip to a worker per batch)
#   7c. schedule_apart.txt  step 4 with stack_seg_collate(compact=False):
#                     images and masks apart, per-sample mask views sent
#                     (the layout of run B, against step 4's one buffer)
#   7d. schedule_int64_masks.txt  step 4 with the masks sent as mmseg's
#                     int64 (no mask_dtype='uint8': 11 MiB a batch, not 4)
#   7e. loader_contend.txt, loader_contend_fs.txt  step 5 while another
#                     thread runs Python (as the busy main thread holds the
#                     GIL), with fd and with file_system sharing
#   8. ablation.txt   eager fp32 dfqhead and segformer-768 (RDWT share, cost)
#   9. paint.txt      --show-dir painting: mmseg's visualiser vs the overlay
# SMOKE=1 runs every step on the CPU at toy sizes (MiT-b0, batch 2, 64 px,
# a few iterations, the Runner's compile switched off): a check that the
# commands run, for the machine without a GPU before the GPU call.
set -u
out=${1:?usage: bash tools/benchmark_gpu.sh OUT_DIR [SECONDS]}
budget=${2:-1800}
mkdir -p "$out"
start=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
py=${PYTHON:-python3}
data=${DATA_ROOT:-/tmp/mmseg_dfq_gpu_data/fundus}
if [ -n "${SMOKE:-}" ]; then
    dev=cpu size=64 batch=2 warmup=1 repeats=2 b=b0 losssteps=2 paints=2
    sched="--schedule-iters 6 --skip-iters 2 --profile-iters 1"
    cfg_options="custom_hooks.3.compile=False model.backbone.init_cfg=None"
    px=64 cases=4
else
    dev=cuda size=256 batch=16 warmup=5 repeats=30 b=b2 losssteps=50 paints=5
    sched="--schedule-iters 400 --skip-iters 100"
    cfg_options="model.backbone.init_cfg=None"
    px=800 cases=${CASES:-12}
fi

left() { echo $((budget - ($(date +%s) - start))); }

step() { # step NAME MIN_SECONDS COMMAND...
    local name=$1 min=$2
    shift 2
    case " ${STEPS:-train losscheck schedule loader schedule_mmseg_data schedule_switch schedule_fs schedule_apart schedule_int64_masks loader_contend loader_contend_fs ablation paint} " in
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
    [ "$dev" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    $py -c 'import torch, mmseg, mmengine, mmseg_dfq; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU", "| mmseg", mmseg.__version__, "mmengine", mmengine.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# 800 px fundus PNGs as in the real release, written while step 2 runs.
if [ ! -f "$data/Domain1_train.list" ]; then
    $py tools/generate_synthetic.py fundus --out "$data" --size "$px" \
        --cases "$cases" >"$out/data.txt" 2>&1 &
    gen=$!
else
    gen=
fi

step train 120 $py tools/benchmark.py --device $dev --backbones $b \
    --batch $batch --size $size --variants dfq \
    --paths ${TRAIN_PATHS:-eager fast} --dtypes ${TRAIN_DTYPES:-fp32 bf16} \
    --warmup $warmup --repeats $repeats --sync-check

step losscheck 60 $py tools/benchmark.py --device $dev --backbones $b \
    --batch $batch --size $size --variants dfq --dtypes fp32 \
    --loss-check $losssteps --paths eager --repeats 3 --warmup 2 --sync-check

[ -n "$gen" ] && wait "$gen"
schedule() { # schedule NAME MIN_SECONDS [CFG_OPTION... | --OPTION VALUE]
    local name=$1 min=$2
    shift 2
    step "$name" "$min" $py tools/benchmark.py --device $dev --full-schedule \
        configs/dfq/dfq_mit-b2_fundus_d1_fast.py $sched \
        --epoch-iters 53 --val-images 51 --profile --sync-check \
        --cfg-options $cfg_options \
        train_dataloader.dataset.data_root="$data" \
        val_dataloader.dataset.data_root="$data" \
        test_dataloader.dataset.data_root="$data" ${SCHEDULE_OPTIONS:-} "$@"
}
schedule schedule 90

loader() { # loader NAME [--OPTION ...]
    local name=$1
    shift
    step "$name" 40 $py tools/benchmark.py --device $dev --loader \
        configs/dfq/dfq_mit-b2_fundus_d1_fast.py --warmup 4 \
        --repeats $repeats --loader-gap 0.1 "$@" --cfg-options $cfg_options \
        train_dataloader.dataset.data_root="$data"
}
loader loader

schedule schedule_mmseg_data 90 train_dataloader.collate_fn._delete_=True \
    train_dataloader.collate_fn.type=pseudo_collate \
    val_dataloader.collate_fn._delete_=True \
    val_dataloader.collate_fn.type=pseudo_collate \
    test_dataloader.collate_fn._delete_=True \
    test_dataloader.collate_fn.type=pseudo_collate \
    model.data_preprocessor.type=SegDataPreProcessor

schedule schedule_switch 90 --switch-interval 0.001

schedule schedule_fs 90 --sharing-strategy file_system

schedule schedule_apart 90 train_dataloader.collate_fn.compact=False

schedule schedule_int64_masks 90 train_dataloader.collate_fn.mask_dtype=None \
    val_dataloader.collate_fn.mask_dtype=None \
    test_dataloader.collate_fn.mask_dtype=None

loader loader_contend --loader-contend
loader loader_contend_fs --loader-contend --sharing-strategy file_system

step ablation 30 $py tools/benchmark.py --device $dev --backbones $b \
    --batch $batch --size $size --variants dfqhead segformer-768 \
    --paths eager --dtypes fp32 --warmup $warmup --repeats $repeats

step paint 10 $py tools/benchmark.py --paint 512 --repeats $paints

echo "total $(($(date +%s) - start)) s"
