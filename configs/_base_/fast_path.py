# GPU fast path of the Runner (mmseg_dfq.engine.fast_path); list it after a
# full config, e.g. configs/dfq/dfq_mit-b2_fundus_d1_fast.py:
# - FastPathHook: backbone, decode head and losses compiled for training
#   (CUDA graphs, static crops), validation/test eager (sizes vary), TF32,
#   channels-last weights, async batch copies, losses logged one iteration
#   late so that logging does not stall the GPU queue;
# - ChannelsLastDistributedDataParallel: channels-last before DDP builds its
#   buckets (no "Grad strides do not match bucket view strides" copies).
# The keys a full config already defines (optimizer, dataloaders, the
# model's data preprocessor, the reliability hooks in custom_hooks) cannot be
# set by a second base (mmengine refuses a key defined in two bases), so they
# are given as fast_* values that the config merges with {{_base_.fast_*}}.
# The full config loads mmseg_dfq (custom_imports), which registers the hook.
fast_path_hook = dict(
    type='FastPathHook',
    compile=dict(mode='reduce-overhead', dynamic=False),
    compile_eval=False,
)
model_wrapper_cfg = dict(
    type='ChannelsLastDistributedDataParallel', broadcast_buffers=False
)
# Fused Adam: one kernel for all parameters (CUDA; torch >= 2.4 on CPU too).
# For bf16 autocast add type='BF16OptimWrapper' (no loss scaler, no host
# sync); measure it against fp32 + TF32 on your GPU first.
fast_optim_wrapper = dict(optimizer=dict(fused=True))
# A 16-core, 1-GPU host: 10 decoding workers, pinned batches for async copies,
# 4 batches queued per worker. Lower num_workers per GPU on multi-GPU hosts.
# stack_seg_collate stacks each batch's images and masks in the workers (two
# tensors to receive and pin, instead of an image and a mask per sample), and
# BatchSegDataPreProcessor (fast_data_preprocessor, for the model) moves and
# normalises them as whole batches; the same values as mmseg's defaults.
# mask_dtype='uint8': the masks travel 1 byte a pixel instead of mmseg's
# int64 8 (a B16 batch of 256 px crops: 4 MiB to write, receive and pin
# instead of 11); BatchSegDataPreProcessor makes them int64 again on the
# device (labels above 255 travel as they are).
fast_train_dataloader = dict(
    num_workers=10,
    pin_memory=True,
    persistent_workers=True,
    prefetch_factor=4,
    collate_fn=dict(type='stack_seg_collate', mask_dtype='uint8'),
)
fast_eval_dataloader = dict(
    num_workers=4,
    pin_memory=True,
    persistent_workers=True,
    prefetch_factor=4,
    collate_fn=dict(type='stack_seg_collate', mask_dtype='uint8'),
)
fast_data_preprocessor = dict(type='BatchSegDataPreProcessor')
