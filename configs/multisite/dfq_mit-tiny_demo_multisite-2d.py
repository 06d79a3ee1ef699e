# Worked example of "Your own multi-site data" (README): DFQ with a MiT-b0
# trained from scratch (CPU, no download) on three hospitals' generated 2D
# data (tools/generate_synthetic.py multisite --out demo_data/multisite),
# held out HospitalA, 300 iterations. The data is declared by
# configs/_base_/datasets/multisite_2d.py alone; this file adds the model,
# the schedule and CPU-demo loader settings.
_base_ = [
    '../_base_/models/dfq_mit-b0.py',
    '../_base_/datasets/multisite_2d.py',
    '../_base_/schedules/schedule_demo.py',
    'mmseg::_base_/default_runtime.py',
]
data_root = 'demo_data/multisite'
model = dict(
    data_preprocessor={{_base_.data_preprocessor_cfg}},
    backbone=dict(init_cfg=None),
    decode_head=dict(channels=128, num_classes=2),
)
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
test_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)
)
