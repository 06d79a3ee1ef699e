# DFQ outside MiT, from config keys only: mmseg's own ResNet-50 FPN model
# with its FPN neck replaced by RDWTNeck (instance-normalised levels) and its
# head by DFQHead (+ RDWT loss). The same three edits bring DFQ into any mmseg
# config whose backbone returns 4 levels at strides 4/8/16/32:
#   1. custom_imports = dict(imports=['mmseg_dfq']) (from dfq_head_only.py)
#   2. model.neck = dict(type='RDWTNeck')
#   3. model.decode_head = dict(_delete_=True, type='DFQHead', in_channels=...)
#      (the head of configs/_base_/models/dfq_head_only.py)
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    '../_base_/models/dfq_head_only.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    neck=dict(_delete_=True, type='RDWTNeck'),
    decode_head=dict(
        _delete_=True,
        **_base_.dfq_head,
        in_channels=[256, 512, 1024, 2048],
        channels=256,
        num_heads=(2, 4, 8),
    ),
)
