# Your own multi-site 2D data (MultiSiteDataset, README "Your own multi-site
# data"): one folder per domain, images and single-channel masks paired by
# file stem:
#   <data_root>/<domain>/images/<case>.png (or .jpg, .tif, .bmp)
#   <data_root>/<domain>/masks/<case>.png
# Copy this file for your data and change data_root, metainfo, mask_values
# and which domains train and test; nothing else needs Python. The values
# here are those of the worked example (tools/generate_synthetic.py
# multisite): three hospitals, the optic disc stored as 255 on 0.
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports a pipeline builder.
_base_ = []
from mmseg_dfq.datasets.pipelines import flip_tta_pipeline  # noqa: E402

dataset_type = 'MultiSiteDataset'
data_root = 'data/multisite'
# What the model sees (width, height); the example's images are 64 px.
crop_size = (64, 64)

# The data set's facts (mmseg_dfq.datasets.base): the classes, the domains
# (= folder names; domain k is the k-th name), what the metric measures
# (structure -> the classes whose union is its mask), 2D evaluation (each
# image a case) and the post-processing of every predicted structure
# (largest 8-connected component, holes filled).
metainfo = dict(
    classes=('background', 'disc'),
    palette=[[0, 0, 0], [0, 200, 0]],
    domains=('HospitalA', 'HospitalB', 'HospitalC'),
    structures=dict(Disc=(1,)),
    eval_mode='2d',
    post_process=dict(largest_cc=True, fill_holes=True, connectivity=2),
)
# Stored mask value -> class index; any other value in a mask is an error
# naming the file (255 as a class index marks ignored pixels).
mask_values = {0: 0, 255: 1}

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

# Images are read as stored (no EXIF rotation) by DFQ's LoadImageFromFile,
# the masks by LoadMappedAnnotations with the data set's mask_values;
# predictions are measured at the original size.
train_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
    dict(type='LoadMappedAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDomainSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadMappedAnnotations'),
    dict(type='PackDomainSegInputs'),
]
dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    mask_values=mask_values,
)

# Train on HospitalB and HospitalC (an 8-image batch: 4 of each, the
# sampler's domain_counts keyed by domain index or name); validate on the
# held-out HospitalA; test every hospital, the held-out one marked unseen.
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
# Per-case Dice / ASD / HD95 (pixels) of every structure, per domain.
# Structures, 2D/3D and post-processing come from the data set's metainfo.
val_evaluator = dict(type='DomainMetric')
test_evaluator = val_evaluator

# Flip test-time augmentation for tools/test.py --tta (mmseg's SegTTAModel
# averages the image's and its mirror's softmax maps).
tta_pipeline = flip_tta_pipeline(test_pipeline)
