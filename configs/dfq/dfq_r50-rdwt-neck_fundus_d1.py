# DFQ outside MiT, from config keys only: mmseg's own ResNet-50 FPN model
# with its FPN neck replaced by RDWTNeck (instance-normalised levels) and its
# head by DFQHead (+ RDWT loss). The same three edits bring DFQ into any mmseg
# config whose backbone returns 4 levels at strides 4/8/16/32:
#   1. custom_imports = dict(imports=['mmseg_dfq'])
#   2. model.neck = dict(type='RDWTNeck')
#   3. model.decode_head = dict(_delete_=True, type='DFQHead', in_channels=...)
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmseg_dfq'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    neck=dict(_delete_=True, type='RDWTNeck'),
    decode_head=dict(
        _delete_=True,
        type='DFQHead',
        in_channels=[256, 512, 1024, 2048],
        in_index=[0, 1, 2, 3],
        channels=256,
        num_heads=(2, 4, 8),
        drop_path_rate=0.1,
        dropout_ratio=0.1,
        num_classes=3,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4),
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            dict(type='ClassDiceLoss', loss_weight=1.0),
        ],
    ),
)
