# The NIfTI variant of the worked example (README, "Your own multi-site
# data"): DFQ with a MiT-b0 trained from scratch (CPU) on three hospitals'
# generated volumes (tools/generate_synthetic.py multisite --file-kind nifti
# --out demo_data/multisite_nifti), 2.5D slices, held out HospitalA; 3D
# metrics in mm. The data is declared by
# configs/_base_/datasets/multisite_nifti.py alone.
_base_ = [
    '../_base_/models/dfq_mit-b0.py',
    '../_base_/datasets/multisite_nifti.py',
    '../_base_/schedules/schedule_demo.py',
    'mmseg::_base_/default_runtime.py',
]
data_root = 'demo_data/multisite_nifti'
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
