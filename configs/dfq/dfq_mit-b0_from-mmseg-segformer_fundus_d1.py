# DFQ composed into mmseg's own SegFormer config with config keys only:
# mmseg's stock MiT-b0 SegFormer model (mmseg::_base_/models/), our fundus
# data (held-out Domain1) and recipe. Three edits turn any mmseg SegFormer
# config into DFQ:
#   1. custom_imports = dict(imports=['mmseg_dfq']) (from dfq_head_only.py)
#   2. model.backbone.type = 'RDWTMixVisionTransformer' (same weights, so
#      mmseg's MiT checkpoints load unchanged)
#   3. model.decode_head = dict(_delete_=True, type='DFQHead', ...,
#      loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4, normalize=False))
#      (the head of configs/_base_/models/dfq_head_only.py; normalize=False:
#      the loss takes the maps the backbone normalised, as in 2)
# The result is the model of configs/_base_/models/dfq_mit-b0.py (tested).
# Leaving out 2 or the loss of 3 trains a half DFQ: building such a model
# warns (RDWTCompositionWarning) and names the key to set.
_base_ = [
    'mmseg::_base_/models/segformer_mit-b0.py',
    '../_base_/models/dfq_head_only.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0_20220624-7e0fe6dd.pth'  # noqa
model = dict(
    # Fundus pixels to [-1, 1] (mmseg's default is ImageNet statistics).
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    backbone=dict(
        type='RDWTMixVisionTransformer',
        rdwt_stages=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
    ),
    decode_head=dict(
        _delete_=True,
        **_base_.dfq_head,
        in_channels=[32, 64, 160, 256],
        channels=768,
        num_heads=(2, 5, 8),
    ),
)
