# dfq_mit-b2_fundus_d1 on the GPU fast path (configs/_base_/fast_path.py):
# compiled backbone + head with CUDA graphs, TF32, fused Adam, channels-last,
# dataloaders for a 16-core host with batches stacked in the workers and
# pre-processed as whole batches, and the 800 px PNGs decoded and resized
# once per worker (MemoryCache) instead of every epoch. Same model, data,
# augmentation and schedule.
# bf16: --cfg-options optim_wrapper.type=BF16OptimWrapper
_base_ = ['./dfq_mit-b2_fundus_d1.py', '../_base_/fast_path.py']
from mmseg_dfq.config import reliability_hooks  # noqa: E402
from mmseg_dfq.datasets.pipelines import fundus_train_pipeline  # noqa: E402

crop_size = (256, 256)
optim_wrapper = {{_base_.fast_optim_wrapper}}
model = dict(data_preprocessor={{_base_.fast_data_preprocessor}})
# The schedule's reliability hooks (configs/_base_/schedules/dfq_fundus.py)
# plus the fast path.
custom_hooks = reliability_hooks() + [
    {{_base_.fast_path_hook}},
]
# The authors' augmentation, as in _base_/datasets/fundus_dg.py; only the
# deterministic loading + resize is cached.
train_pipeline = fundus_train_pipeline(crop_size, cache_loading=True)
# fast_train_dataloader's settings plus the cached pipeline.
train_dataloader = dict(
    num_workers=10,
    pin_memory=True,
    persistent_workers=True,
    prefetch_factor=4,
    collate_fn=dict(type='stack_seg_collate', mask_dtype='uint8'),
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = {{_base_.fast_eval_dataloader}}
test_dataloader = {{_base_.fast_eval_dataloader}}
