# Ablation baseline: SegFormer (MiT + 768-channel all-MLP head), MiT-b2,
# fundus held-out domain 4.
_base_ = [
    '../_base_/models/segformer_mit-b2.py',
    '../_base_/datasets/fundus_dg_d4.py',
    '../_base_/schedules/dfq_fundus.py',
    'mmseg::_base_/default_runtime.py',
]
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    decode_head=dict(num_classes=3),
)
