# CPU demo (tools/demo.py prostate): DFQ with a MiT-b0 backbone trained from
# scratch and a 128-channel fusion, on generated NIfTI volumes (64 px
# slices, 2.5D), held-out site 1 (RUNMC), 300 iterations; 3D metrics in mm.
_base_ = [
    '../_base_/models/dfq_mit-b0.py',
    '../_base_/datasets/prostate_dg_d1.py',
    '../_base_/schedules/schedule_demo.py',
    'mmseg::_base_/default_runtime.py',
]
data_root = 'demo_data/prostate'
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    backbone=dict(init_cfg=None),
    decode_head=dict(channels=128, num_classes=2),
)
optim_wrapper = dict(optimizer=dict(lr=3e-4 * 2))
# Iteration-based demo: the sampler runs on across its epochs rather than
# being restarted by mmengine, which sleeps 2 s at every restart.
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    sampler=dict(infinite=True),
    dataset=dict(data_root=data_root),
)
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)
)
test_dataloader = val_dataloader
