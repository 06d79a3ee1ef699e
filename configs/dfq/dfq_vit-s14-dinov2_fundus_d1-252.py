# DFQ parts on a DINOv2 ViT-S/14 (MultiLevelNeck + RDWTNeck + DFQHead + RDWT
# loss), fundus OD/OC, held-out Domain1, fine-tuning the whole network.
# Crops of 252 px (18 x 18 patches); otherwise the fundus pipelines of
# configs/_base_/datasets/fundus_dg.py (rebuilt at 252 px).
# The backbone learns at 0.1x the head's rate: the DFQ recipe's Adam 5e-4 is
# for the MiT and its from-scratch head, and would overwrite the DINOv2
# features. dfq_vit-s14-dinov2-frozen_fundus_d1-252.py freezes them instead.
_base_ = [
    '../_base_/models/dfq_vit-s14-dinov2.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
from mmseg_dfq.datasets.pipelines import (  # noqa: E402
    flip_tta_pipeline,
    fundus_test_pipeline,
    fundus_train_pipeline,
)

crop_size = (252, 252)
model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=3),
)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=0.1)))
)
train_pipeline = fundus_train_pipeline(crop_size)
test_pipeline = fundus_test_pipeline(crop_size)
# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
