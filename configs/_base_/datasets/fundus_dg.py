# Fundus OD/OC, 4 domains of the DoFE release (Domain{k}_{split}.list layout,
# see mmseg_dfq.datasets.FundusDGDataset). Labels: 0 background, 1 disc rim,
# 2 cup. The defaults train on domains 2-4 and test on the held-out domain 1;
# a per-split config overrides `domains` / `unseen_domains` of the three
# dataloaders and `domain_counts` of the sampler (mmengine merges the dicts):
#   held-out 1: [3, 6, 7]  2: [2, 7, 7]  3: [2, 4, 10]  4: [2, 4, 10]
# (the authors' per-domain counts of a 16-image batch, in source order).
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports the pipeline builders.
_base_ = []
from mmseg_dfq.datasets.pipelines import (  # noqa: E402
    fundus_test_pipeline,
    fundus_train_pipeline,
)

dataset_type = 'FundusDGDataset'
data_root = 'data/fundus'
crop_size = (256, 256)
source_domains = [2, 3, 4]
target_domains = [1]
domain_counts = [3, 6, 7]

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

# batch_size must equal sum(domain_counts): every batch holds the mix.
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DomainMixSampler', domain_counts=domain_counts),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        domains=source_domains,
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
        domains=target_domains,
        unseen_domains=target_domains,
        split='test',
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# Per-image Dice / ASD / HD95 (pixels) of the optic disc (rim + cup) and cup,
# after the authors' post-processing (largest component, holes filled).
val_evaluator = dict(
    type='DomainMetric', structures=dict(OD=[1, 2], OC=[2]), mode='2d'
)
test_evaluator = val_evaluator
