"""tools/train.py and tools/test.py end to end on generated data.

The demo configs train for a few iterations on generated fundus (2D, four
domains) and prostate (3D NIfTI volumes) data, then tools/test.py evaluates
the last checkpoint and writes the metrics JSON and the per-case CSV. A
plain mmseg config (``BaseSegDataset`` PNGs, ``IoUMetric``) runs through
the same tools, with ``--out`` and ``--show-dir``. A test with two
processes (``tools/dist_test.sh``, of the suite's one 2-process training,
``tools/dist_train.sh``) reports exactly what one process reports: every
sample once, prostate volumes reassembled from slices that the two ranks
evaluated separately. Resuming is tested in tests/test_engine/test_resume.py.
"""

import csv
import glob
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch

from ..helpers import (
    DIST_TEST,
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    TEST,
    TRAIN,
    TRAIN_ITERS,
    assert_metrics_equal,
    data_options,
    load_metrics,
    run_dist_script,
    run_tool,
    train_options,
)

FUNDUS_DOMAINS = ('Domain1', 'Domain2', 'Domain3', 'Domain4')
# make_fundus(cases=5) puts 2 images of each domain in the test split.
FUNDUS_TEST_CASES = 2
# make_prostate(cases=3): the held-out RUNMC site has 3 volumes.
PROSTATE_TEST_CASES = 3
METRICS = ('Dice', 'ASD', 'HD95')
# Train iterations of the plain mmseg config.
TINY_ITERS = 4

TINY_CONFIG_TEMPLATE = """
_base_ = [
    {schedule!r},
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmseg_dfq'], allow_failed_imports=False)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(32, 32),
    ),
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=8,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=2,
    ),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[8, 16, 32, 64],
        in_index=[0, 1, 2, 3],
        channels=16,
        num_classes=2,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
metainfo = dict(
    classes=('background', 'blob'), palette=[[0, 0, 0], [255, 255, 255]]
)
def _dataset(split, pipeline):
    return dict(
        type='BaseSegDataset',
        metainfo=metainfo,
        data_root={data_root!r},
        data_prefix=dict(
            img_path='img_dir/' + split, seg_map_path='ann_dir/' + split
        ),
        img_suffix='.png',
        seg_map_suffix='.png',
        pipeline=pipeline,
    )
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=_dataset('train', train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=_dataset('val', test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
max_iters = {max_iters}
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=max_iters,
        by_epoch=False,
    )
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_iters // 2, max_keep_ckpts=2),
)
"""


def last_checkpoint(work_dir):
    """The checkpoint that mmengine's ``last_checkpoint`` file names."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        path = f.read().strip()
    assert osp.isfile(path), path
    return path


def evaluate_checkpoint(config, checkpoint, data_root, work_dir, nproc=1):
    """Test a checkpoint: tools/test.py, or tools/dist_test.sh if nproc > 1.

    Returns:
        tuple[dict, list[dict], str]: The metrics JSON (written where
        ``--metrics-json`` says), the per-case CSV rows and the output.
    """
    json_path = osp.join(work_dir, f'metrics_{nproc}proc.json')
    csv_path = osp.join(work_dir, 'cases.csv')
    args = [
        '--work-dir',
        work_dir,
        '--metrics-json',
        json_path,
        '--per-case',
        csv_path,
        '--cfg-options',
        *data_options(data_root),
    ]
    if nproc > 1:
        log = run_dist_script(
            DIST_TEST,
            [config, checkpoint],
            nproc,
            args,
            bin_dir=osp.join(work_dir, 'bin'),
        )
    else:
        log = run_tool(TEST, [config, checkpoint, *args])
    # Only the main process writes, with the results of every rank.
    assert log.count('Metrics written to') == 1, log[-3000:]
    assert f'Metrics written to {json_path}' in log, log[-3000:]
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    return load_metrics(json_path), rows, log


def check_structure_metrics(metrics, group, structure):
    """Dice in [0, 100], distances >= 0 or null (an empty mask)."""
    dice = metrics[f'{group}/{structure}_Dice']
    assert isinstance(dice, float) and 0.0 <= dice <= 100.0, (group, dice)
    for name in ('ASD', 'HD95'):
        value = metrics[f'{group}/{structure}_{name}']
        assert value is None or (
            isinstance(value, float) and 0.0 <= value < 1e4
        ), (group, name, value)


def check_cases_against_metrics(rows, metrics, structure):
    """The per-domain Dice of the JSON is the mean of the per-case rows."""
    for domain in {row['domain'] for row in rows}:
        dice = [
            float(row[f'{structure}_Dice'])
            for row in rows
            if row['domain'] == domain
        ]
        assert metrics[f'{domain}/{structure}_Dice'] == pytest.approx(
            np.mean(dice), abs=1e-3
        ), domain


@pytest.fixture(scope='module')
def fundus_run(fundus_dist_run, fundus_root):
    """The shared 2-process fundus training, its last checkpoint tested
    with one process (tools/test.py) and with two (tools/dist_test.sh)."""
    work_dir, log = fundus_dist_run
    checkpoint = last_checkpoint(work_dir)
    one, rows_one, _ = evaluate_checkpoint(
        FUNDUS_CONFIG, checkpoint, fundus_root, osp.join(work_dir, 'test1')
    )
    two, rows_two, log_two = evaluate_checkpoint(
        FUNDUS_CONFIG,
        checkpoint,
        fundus_root,
        osp.join(work_dir, 'test2'),
        nproc=2,
    )
    return dict(
        work_dir=work_dir,
        log=log,
        checkpoint=checkpoint,
        metrics=one,
        rows=rows_one,
        metrics_two=two,
        rows_two=rows_two,
        log_two=log_two,
    )


@pytest.fixture(scope='module')
def prostate_run(tmp_path_factory, prostate_root):
    """One-process prostate training (validation at the end) and its test."""
    work_dir = str(tmp_path_factory.mktemp('prostate_run'))
    log = run_tool(
        TRAIN,
        [
            PROSTATE_CONFIG,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *train_options(prostate_root),
        ],
    )
    checkpoint = last_checkpoint(work_dir)
    metrics, rows, _ = evaluate_checkpoint(
        PROSTATE_CONFIG, checkpoint, prostate_root, osp.join(work_dir, 'test')
    )
    return dict(
        work_dir=work_dir,
        log=log,
        checkpoint=checkpoint,
        metrics=metrics,
        rows=rows,
    )


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """Write 4 train / 2 val PNG pairs and the config; return its path."""
    root = tmp_path_factory.mktemp('tiny_seg')
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for split, count in (('train', 4), ('val', 2)):
        os.makedirs(root / 'img_dir' / split)
        os.makedirs(root / 'ann_dir' / split)
        for i in range(count):
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), 7
            label = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            img[label == 1] += 150
            name = f'{split}_{i}.png'
            cv2.imwrite(str(root / 'img_dir' / split / name), img)
            cv2.imwrite(str(root / 'ann_dir' / split / name), label)
    schedule = osp.join(REPO_ROOT, 'configs', '_base_', 'schedules')
    config = root / 'tiny_segformer.py'
    config.write_text(
        TINY_CONFIG_TEMPLATE.format(
            schedule=osp.join(schedule, 'schedule_demo.py'),
            data_root=str(root),
            max_iters=TINY_ITERS,
        )
    )
    return str(config)


def test_plain_mmseg_config_train_then_test(tiny_config, tmp_path):
    # A plain mmseg config (BaseSegDataset, SegformerHead with SyncBN,
    # IoUMetric) through the same tools.
    work_dir = str(tmp_path / 'work')
    log = run_tool(TRAIN, [tiny_config, '--work-dir', work_dir])
    assert f'Iter(train) [{TINY_ITERS}/{TINY_ITERS}]' in log, log[-3000:]
    # The validation at the end ran over both images.
    assert re.search(r'Iter\(val\) \[2/2\].*mIoU: ', log), log[-3000:]
    for it in (TINY_ITERS // 2, TINY_ITERS):
        assert osp.isfile(osp.join(work_dir, f'iter_{it}.pth'))
    checkpoint = osp.join(work_dir, f'iter_{TINY_ITERS}.pth')
    # The weights load with torch's weights_only default; SyncBN trained
    # as BN on this host.
    state = torch.load(checkpoint)['state_dict']
    assert 'decode_head.fusion_conv.bn.running_mean' in state

    test_dir = str(tmp_path / 'test')
    pred_dir = str(tmp_path / 'preds')
    show_dir = str(tmp_path / 'show')
    log = run_tool(
        TEST,
        [
            tiny_config,
            checkpoint,
            '--work-dir',
            test_dir,
            '--out',
            pred_dir,
            '--show-dir',
            show_dir,
        ],
    )
    # Without --metrics-json the metrics go to the work dir.
    metrics_file = osp.join(test_dir, 'metrics.json')
    assert f'Metrics written to {metrics_file}' in log, log[-3000:]
    metrics = load_metrics(metrics_file)
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc', 'mDice'}
    for value in metrics.values():
        assert isinstance(value, float) and 0 <= value <= 100
    # --out keeps mmseg's meaning: IoUMetric writes the predicted masks.
    assert sorted(os.listdir(pred_dir)) == ['val_0.png', 'val_1.png']
    # --show-dir paints every test image (DomainVisualizationHook).
    painted = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(painted) == 2, painted


def test_fundus_train_validate_test(fundus_run):
    log = fundus_run['log']
    assert osp.basename(fundus_run['checkpoint']) == f'iter_{TRAIN_ITERS}.pth'
    assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in log
    # Validation ran once, on the held-out Domain1 only (its 2 test images,
    # one per rank).
    validations = re.findall(r'Iter\(val\) \[1/1\] +Domain1', log)
    assert len(validations) == 1, log[-3000:]
    assert 'Domain2/OD_Dice' not in log
    assert 'decode.loss_rdwt' in log

    metrics = fundus_run['metrics']
    for group in (*FUNDUS_DOMAINS, 'mean', 'mean_unseen'):
        for structure in ('OD', 'OC'):
            check_structure_metrics(metrics, group, structure)
    for domain in FUNDUS_DOMAINS:
        assert metrics[f'{domain}/n_cases'] == FUNDUS_TEST_CASES
    # Domain1 is the only unseen domain; every domain has the same number
    # of cases, so the mean over cases is the mean over domains.
    for structure in ('OD', 'OC'):
        for name in METRICS:
            key = f'{structure}_{name}'
            assert metrics[f'mean_unseen/{key}'] == metrics[f'Domain1/{key}']
        dice = [metrics[f'{d}/{structure}_Dice'] for d in FUNDUS_DOMAINS]
        assert metrics[f'mean/{structure}_Dice'] == pytest.approx(
            np.mean(dice), abs=1e-9
        )
    # A few iterations already find the disc on the 64 px images.
    assert metrics['mean/OD_Dice'] > 10.0

    rows = fundus_run['rows']
    assert len(rows) == len(FUNDUS_DOMAINS) * FUNDUS_TEST_CASES
    assert len({row['case_id'] for row in rows}) == len(rows)
    assert {r['seen'] for r in rows if r['domain'] == 'Domain1'} == {'False'}
    check_cases_against_metrics(rows, metrics, 'OD')


def test_prostate_train_validate_test(prostate_run):
    log, metrics = prostate_run['log'], prostate_run['metrics']
    assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in log
    assert re.search(r'Iter\(val\).*RUNMC/Prostate_Dice', log), log[-3000:]
    for group in ('RUNMC', 'mean'):
        check_structure_metrics(metrics, group, 'Prostate')
    assert metrics['RUNMC/n_cases'] == PROSTATE_TEST_CASES
    # Only the held-out site is tested: the mean and the unseen mean are
    # RUNMC's.
    domains = {key.split('/')[0] for key in metrics}
    assert domains == {'RUNMC', 'mean', 'mean_unseen'}, domains
    for name in METRICS:
        key = f'Prostate_{name}'
        assert metrics[f'mean/{key}'] == metrics[f'RUNMC/{key}']
        assert metrics[f'mean_unseen/{key}'] == metrics[f'RUNMC/{key}']

    # 3D: one row per volume, not per slice.
    rows = prostate_run['rows']
    assert sorted(row['case_id'] for row in rows) == [
        f'RUNMC/Case{i:02d}' for i in range(PROSTATE_TEST_CASES)
    ]
    check_cases_against_metrics(rows, metrics, 'Prostate')


def test_two_process_test_matches_one_process(fundus_run):
    one, rows_one = fundus_run['metrics'], fundus_run['rows']
    two, rows_two = fundus_run['metrics_two'], fundus_run['rows_two']
    # 8 test images on 2 ranks, 4 each: every image exactly once in the
    # results.
    log = fundus_run['log_two']
    assert re.search(r'Iter\(test\) \[4/4\]', log), log[-3000:]
    assert not re.search(r'Iter\(test\) \[5/', log), log[-3000:]
    assert len(rows_two) == len(FUNDUS_DOMAINS) * FUNDUS_TEST_CASES
    key = lambda row: row['case_id']  # noqa: E731
    assert sorted(rows_two, key=key) == sorted(rows_one, key=key)
    for domain in FUNDUS_DOMAINS:
        assert two[f'{domain}/n_cases'] == FUNDUS_TEST_CASES
    assert_metrics_equal(one, two)


def test_prostate_two_process_test_matches_one_process(
    prostate_run, prostate_root
):
    two, rows, _ = evaluate_checkpoint(
        PROSTATE_CONFIG,
        prostate_run['checkpoint'],
        prostate_root,
        osp.join(prostate_run['work_dir'], 'test2'),
        nproc=2,
    )
    # 15 slices of 3 volumes on 2 ranks: the sampler pads rank 1 with a
    # repeated slice and splits a volume between the ranks; the gathered
    # results must still rebuild each volume exactly once.
    assert len(rows) == PROSTATE_TEST_CASES
    assert two['RUNMC/n_cases'] == PROSTATE_TEST_CASES
    assert_metrics_equal(prostate_run['metrics'], two)
