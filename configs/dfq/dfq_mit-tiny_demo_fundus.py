# CPU demo (tools/demo.py fundus): DFQ with a MiT-b0 backbone trained from
# scratch (no download) and a 128-channel fusion, on generated fundus data
# (96 px images, 64 px crops), held-out Domain1, 300 iterations.
_base_ = [
    '../_base_/models/dfq_mit-b0.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/schedule_demo.py',
    'mmseg::_base_/default_runtime.py',
]
from mmseg_dfq.datasets.pipelines import (  # noqa: E402
    fundus_test_pipeline,
    fundus_train_pipeline,
)

data_root = 'demo_data/fundus'
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        size=crop_size,
    ),
    backbone=dict(init_cfg=None),
    decode_head=dict(channels=128, num_classes=3),
)
# The base's pipelines at the 64 px crop.
train_pipeline = fundus_train_pipeline(crop_size)
test_pipeline = fundus_test_pipeline(crop_size)
# Iteration-based demo: the sampler runs on across its (tiny) epochs rather
# than being restarted by mmengine, which sleeps 2 s at every restart.
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    sampler=dict(infinite=True),
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
default_hooks = dict(visualization=dict(type='SegVisualizationHook'))
