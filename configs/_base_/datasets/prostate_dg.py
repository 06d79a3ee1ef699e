# Prostate T2 MRI, 6 sites of the SAML release (<site>/CaseXX.nii.gz +
# CaseXX_segmentation.nii.gz, see mmseg_dfq.datasets.ProstateDGDataset),
# 2.5D slices (k-1, k, k+1) of volumes min-max scaled to [-1, 1]. Labels:
# 0 background, 1 prostate. Sites: 1 RUNMC, 2 BMC, 3 I2CVB, 4 UCL, 5 BIDMC,
# 6 HK. The defaults train on sites 2-6 and test on the held-out site 1; a
# per-split config (prostate_dg_d{k}.py) overrides `domains` /
# `unseen_domains` of the dataloaders and replaces `domain_counts` of the
# sampler (the authors draw 2 slices per source site). The split's values
# live in the dataloaders only (no top-level copies that a split config would
# leave behind).
# Like the authors, sources and target use every case (split='all').
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports a pipeline builder.
_base_ = []
from mmseg_dfq.datasets.pipelines import flip_tta_pipeline  # noqa: E402

dataset_type = 'ProstateDGDataset'
data_root = 'data/prostate'

# Inputs are already in [-1, 1] (float32, 3 channels of one volume).
# mmseg pads a training batch to a common size: a multiple of 32 (384 x 384
# slices of the release are left as they are; other sizes get padded with
# ignored labels).
data_preprocessor_cfg = dict(
    mean=[0.0, 0.0, 0.0],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=32,
)

# The authors train prostate without augmentation (a flip, if wanted, is
# dict(type='RandomFlip', prob=0.5) after the loader; see docs/design.md).
train_pipeline = [
    dict(type='LoadProstateSlice'),
    dict(type='PackDomainSegInputs'),
]
# DFQ's LoadImageFromFile (the mmseg_dfq scope) loads a dataset sample as
# LoadProstateSlice does; under that type name mmseg's inference_model /
# MMSegInferencer also run this pipeline on 2.5D slices given as arrays.
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
    dict(type='PackDomainSegInputs'),
]

# Every batch holds the mix: `domain_counts` gives each source site's slices
# per batch (keyed by site index or name), and DomainMixBatchSampler stops
# the run when its dataloader is built if batch_size is not their sum,
# whatever launcher started it. cache_bytes is per dataloader worker.
train_dataloader = dict(
    batch_size=10,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(
        type='DomainMixSampler', domain_counts={2: 2, 3: 2, 4: 2, 5: 2, 6: 2}
    ),
    batch_sampler=dict(type='DomainMixBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        domains=[2, 3, 4, 5, 6],
        split='all',
        cache_bytes=1 << 30,
        pipeline=train_pipeline,
    ),
)
# Slices in volume order, so each volume is decoded once per evaluation.
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        domains=[1],
        unseen_domains=[1],
        split='all',
        cache_bytes=1 << 30,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# Per-volume 3D Dice / ASD / HD95 in mm (NIfTI spacing) after keeping the
# largest 3D component; slices are reassembled by case_id / slice_index. The
# structure, 3D mode and post-processing are ProstateDGDataset's METAINFO.
val_evaluator = dict(type='DomainMetric')
test_evaluator = val_evaluator

# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
