# Your own multi-site NIfTI data (MultiSiteDataset with file_kind='nifti',
# README "Your own multi-site data"): one folder per domain, volumes and
# segmentations paired by file stem (.nii or .nii.gz):
#   <data_root>/<domain>/images/<case>.nii.gz
#   <data_root>/<domain>/labels/<case>.nii.gz
# (the SAML prostate layout, both in one folder with a _segmentation suffix,
# is img_dir='', mask_dir='', mask_suffix='_segmentation'). Every slice
# volume[:, :, k] is a 2.5D sample (slices k-1, k, k+1 of the volume scaled
# to [-1, 1]); cases are evaluated as 3D volumes in mm (header spacing).
# Copy this file for your data and change data_root, metainfo, mask_values
# and which domains train and test. The values here are those of the worked
# example (tools/generate_synthetic.py multisite --file-kind nifti).
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports a pipeline builder.
_base_ = []
from mmseg_dfq.datasets.pipelines import flip_tta_pipeline  # noqa: E402

dataset_type = 'MultiSiteDataset'
data_root = 'data/multisite_nifti'

# The data set's facts (mmseg_dfq.datasets.base); 3D evaluation with the
# largest 6-connected component of every structure, no hole filling.
metainfo = dict(
    classes=('background', 'prostate'),
    palette=[[0, 0, 0], [255, 0, 0]],
    domains=('HospitalA', 'HospitalB', 'HospitalC'),
    structures=dict(Prostate=(1,)),
    eval_mode='3d',
    post_process=dict(largest_cc=True, fill_holes=False, connectivity=1),
)
# Stored segmentation value -> class index: the zone label 2 is prostate.
mask_values = {0: 0, 1: 1, 2: 1}

# Inputs are already in [-1, 1]; a batch is padded to a multiple of 32.
data_preprocessor_cfg = dict(
    mean=[0.0, 0.0, 0.0],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=32,
)

# DFQ's LoadImageFromFile loads a volume sample's 2.5D slice and labels;
# PackDomainSegInputs keeps the spacing (and refuses a slice without one).
train_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
    dict(type='PackDomainSegInputs'),
]
test_pipeline = train_pipeline
dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    file_kind='nifti',
    img_dir='images',
    mask_dir='labels',
    mask_values=mask_values,
    cache_bytes=1 << 30,
)

# Train on HospitalB and HospitalC (4 slices of each per batch); validate on
# the held-out HospitalA; test every hospital, the held-out one unseen.
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DomainMixSampler', domain_counts={2: 4, 3: 4}),
    batch_sampler=dict(type='DomainMixBatchSampler'),
    dataset=dict(
        **dataset, domains=[2, 3], split='all', pipeline=train_pipeline
    ),
)
# Slices in volume order, so each volume is decoded once per evaluation.
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset,
        domains=[1],
        unseen_domains=[1],
        split='all',
        pipeline=test_pipeline,
    ),
)
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset,
        domains=[1, 2, 3],
        unseen_domains=[1],
        split='all',
        pipeline=test_pipeline,
    ),
)
# Per-volume 3D Dice / ASD / HD95 in mm of every structure, per domain.
# Structures, 2D/3D and post-processing come from the data set's metainfo.
val_evaluator = dict(type='DomainMetric')
test_evaluator = val_evaluator

# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
