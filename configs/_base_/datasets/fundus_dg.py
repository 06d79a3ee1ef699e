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
dataset_type = 'FundusDGDataset'
data_root = 'data/fundus'
crop_size = (256, 256)

# mmseg's default PackSegInputs meta keys plus the per-sample domain metas;
# equal to mmseg_dfq.datasets.DFQ_META_KEYS (checked by the tests).
meta_keys = (
    'img_path',
    'seg_map_path',
    'ori_shape',
    'img_shape',
    'pad_shape',
    'scale_factor',
    'flip',
    'flip_direction',
    'reduce_zero_label',
    'domain',
    'domain_idx',
    'seen',
    'case_id',
    'slice_index',
    'num_slices',
    'spacing',
)

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
# dict(type='RandomFlip', prob=0.5) before PackSegInputs for one; see the
# departures table in docs/design.md).
train_pipeline = [
    dict(type='LoadFundusImageFromFile'),
    dict(type='LoadFundusAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(
        type='RandomApply',
        transforms=[
            dict(
                type='RandomAnisotropicResize',
                scale=crop_size,
                ratio_range=(1.0, 1.5),
            )
        ],
        prob=0.5,
    ),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
# Annotations are loaded after Resize so the metric sees original-size masks
# (mmseg resizes predictions back to ori_shape). The loaders are chosen so
# that mmseg's inference_model / MMSegInferencer run this pipeline as is:
# DFQ's LoadImageFromFile (the mmseg_dfq scope; LoadFundusImageFromFile
# under the type name mmseg's inferencer looks for) and annotations that are
# skipped for an image without a mask.
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadFundusAnnotations'),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]

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

# Test-time augmentation for tools/test.py --tta (mmseg's convention): each
# image is tested as is and flipped horizontally; mmseg flips the second
# prediction back and SegTTAModel (the tta_model of mmseg's
# default_runtime.py) averages the two softmax maps. The test pipeline runs
# once up to packing; the metric gets the unflipped copy's ground truth and
# the domain meta keys (the same in both copies). A config that replaces
# test_pipeline redefines tta_pipeline from it with the base's tta_flips,
# as configs/dfq/dfq_mit-tiny_demo_fundus.py does.
tta_flips = [
    dict(type='RandomFlip', prob=0.0, direction='horizontal'),
    dict(type='RandomFlip', prob=1.0, direction='horizontal'),
]
tta_pipeline = [
    *test_pipeline[:-1],
    dict(type='TestTimeAug', transforms=[tta_flips, [test_pipeline[-1]]]),
]
