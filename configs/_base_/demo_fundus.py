# Recipe of the fundus CPU demos (tools/demo.py fundus): generated fundus
# data (96 px images, 64 px crops), held-out Domain1, 300 iterations of the
# demo schedule, and the demo's model edits (`demo_model`). A demo config
# adds a model base, e.g. configs/dfq/dfq_mit-tiny_demo_fundus.py:
#   _base_ = ['../_base_/models/dfq_mit-b0.py', '../_base_/demo_fundus.py']
#   model = {{_base_.demo_model}}
_base_ = [
    './datasets/fundus_dg_d1.py',
    './schedules/schedule_demo.py',
    'mmseg::_base_/default_runtime.py',
]
from mmseg_dfq.datasets.pipelines import (  # noqa: E402
    flip_tta_pipeline,
    fundus_test_pipeline,
    fundus_train_pipeline,
)

data_root = 'demo_data/fundus'
crop_size = (64, 64)
# The demo's edits to whichever model a demo config takes (MiT-b0 from
# scratch, no download; a 128-channel head; 64 px inputs). A variable, not
# `model`: the model comes from another base of the same config, and
# mmengine refuses a key that two bases both set. A demo config takes it
# with `model = {{_base_.demo_model}}`.
demo_model = dict(
    data_preprocessor=dict(
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        size=crop_size,
    ),
    backbone=dict(init_cfg=None),
    decode_head=dict(channels=128, num_classes=3),
)
# The fundus base's pipelines at the 64 px crop.
train_pipeline = fundus_train_pipeline(crop_size)
test_pipeline = fundus_test_pipeline(crop_size)
# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
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
# The schedule's visualisation hook (mmseg's, which also paints NIfTI
# slices; off unless a test tool asks for pictures).
default_hooks = dict(visualization=dict(type='DomainVisualizationHook'))
