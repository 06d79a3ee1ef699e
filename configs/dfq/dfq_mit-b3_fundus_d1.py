# DFQ with MiT-b3, the authors' backbone, fundus held-out Domain1.
_base_ = [
    '../_base_/models/dfq_mit-b3.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    decode_head=dict(num_classes=3),
)
