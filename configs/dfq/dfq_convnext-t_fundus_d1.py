# DFQ (RDWTNeck + DFQHead + RDWT loss) on mmpretrain's ConvNeXt-T, fundus
# OD/OC, held-out Domain1, the authors' recipe as for MiT.
_base_ = [
    '../_base_/models/dfq_convnext-t.py',
    '../_base_/datasets/fundus_dg_d1.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    decode_head=dict(num_classes=3),
)
