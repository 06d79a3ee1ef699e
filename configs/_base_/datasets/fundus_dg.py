# Fundus OD/OC, 4 domains of the DoFE release (Domain{k}_{split}.list layout,
# see mmseg_dfq.datasets.FundusDGDataset). Labels: 0 background, 1 disc rim,
# 2 cup. The defaults train on domains 2-4 and test on the held-out domain 1;
# a per-split config (fundus_dg_d{k}.py) overrides `domains` /
# `unseen_domains` of the three dataloaders and replaces `domain_counts` of
# the sampler, the authors' per-domain counts of a 16-image batch:
#   held-out 1: {2: 3, 3: 6, 4: 7}   2: {1: 2, 3: 7, 4: 7}
#            3: {1: 2, 2: 4, 4: 10}  4: {1: 2, 2: 4, 3: 10}
# The split's values live in the dataloaders only (no top-level copies that a
# split config would leave behind).
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports the pipeline builders.
_base_ = []
from mmseg_dfq.datasets.pipelines import (  # noqa: E402
    flip_tta_pipeline,
    fundus_test_pipeline,
    fundus_train_pipeline,
)

dataset_type = 'FundusDGDataset'
data_root = 'data/fundus'
crop_size = (256, 256)

# Pixels to [-1, 1] in RGB order; model configs use
# data_preprocessor=dict(type='SegDataPreProcessor', **data_preprocessor_cfg).
data_preprocessor_cfg = dict(
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)

# The authors' augmentation: resize to 256, then half of the time scale x
# and y independently by U(1, 1.5), random crop back to 256; no flip (add
# dict(type='RandomFlip', prob=0.5) before PackDomainSegInputs for one; see
# the departures table in docs/design.md). The test pipeline loads the
# annotations after Resize (the metric sees original-size masks) with
# loaders mmseg's inference APIs accept. Both are spelled out in
# mmseg_dfq/datasets/pipelines.py, so that a config with another crop_size
# rebuilds them instead of copying them.
train_pipeline = fundus_train_pipeline(crop_size)
test_pipeline = fundus_test_pipeline(crop_size)

# Every batch holds the mix: `domain_counts` gives each source domain's
# samples per batch (keyed by domain index or name), and
# DomainMixBatchSampler stops the run when its dataloader is built if
# batch_size is not their sum, whatever launcher started it.
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DomainMixSampler', domain_counts={2: 3, 3: 6, 4: 7}),
    batch_sampler=dict(type='DomainMixBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        domains=[2, 3, 4],
        split='train',
        pipeline=train_pipeline,
    ),
)
# The held-out domain's test split; split=('train', 'test') evaluates on all
# of its images.
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
        split='test',
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# Per-image Dice / ASD / HD95 (pixels) of the optic disc (rim + cup) and cup,
# after the authors' post-processing (largest component, holes filled): the
# structures, 2D mode and post-processing are FundusDGDataset's METAINFO.
val_evaluator = dict(type='DomainMetric')
test_evaluator = val_evaluator

# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
