"""Flip test-time augmentation: the configs, the pipeline and ``--tta``.

Every fundus and prostate config tests with its own test pipeline under
``--tta`` (plus a horizontal flip), the flipped copy keeps the domain meta
keys that ``DomainMetric`` needs, and ``tools/test.py --tta`` on a briefly
trained demo checkpoint reports the per-domain table: fundus images per
domain, prostate volumes reassembled from their TTA-merged slices.
"""

import copy
import csv
import glob
import os.path as osp
import re

import numpy as np
import pytest
from mmengine.config import Config
from mmseg.models import SegTTAModel
from mmseg.registry import DATASETS, MODELS

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    TEST,
    TRAIN,
    data_options,
    load_metrics,
    run_tool,
    train_options,
)

CONFIGS = sorted(
    osp.relpath(p, REPO_ROOT)
    for p in glob.glob(osp.join(REPO_ROOT, 'configs/**/*.py'), recursive=True)
    if '_base_' not in p
)
DOMAIN_KEYS = ('domain', 'domain_idx', 'seen', 'case_id')


def test_every_config_flips_its_own_test_pipeline():
    """A config that changes test_pipeline must change tta_pipeline too."""
    for config in CONFIGS:
        cfg = Config.fromfile(osp.join(REPO_ROOT, config))
        assert issubclass(MODELS.get(cfg.tta_model.type), SegTTAModel), config
        test = cfg.test_dataloader.dataset.pipeline
        tta = cfg.tta_pipeline
        assert tta[:-1] == test[:-1], config
        assert tta[-1].type == 'TestTimeAug', config
        flips, pack = tta[-1].transforms
        assert [(f.type, f.prob, f.direction) for f in flips] == [
            ('RandomFlip', 0.0, 'horizontal'),
            ('RandomFlip', 1.0, 'horizontal'),
        ], config
        assert pack == [test[-1]], config


@pytest.mark.parametrize('data', ['fundus', 'prostate'])
def test_tta_copies_are_flipped_and_keep_the_domain_keys(data, request):
    config = FUNDUS_CONFIG if data == 'fundus' else PROSTATE_CONFIG
    root = request.getfixturevalue(f'{data}_root')
    cfg = Config.fromfile(config)
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg.update(data_root=root, pipeline=cfg.tta_pipeline)
    dataset = DATASETS.build(dataset_cfg)
    sample = dataset[len(dataset) // 2]
    inputs, data_samples = sample['inputs'], sample['data_samples']
    assert len(inputs) == len(data_samples) == 2
    np.testing.assert_array_equal(
        inputs[1].numpy(), inputs[0].flip(-1).numpy()
    )
    plain, flipped = data_samples
    assert not plain.flip and flipped.flip
    assert flipped.flip_direction == 'horizontal'
    keys = DOMAIN_KEYS + (
        ('slice_index', 'num_slices', 'spacing') if data == 'prostate' else ()
    )
    for key in keys:
        assert key in plain, key
        assert np.all(
            np.asarray(flipped.metainfo[key])
            == np.asarray(plain.metainfo[key])
        ), key
    # The metric's ground truth is the unflipped copy's.
    assert plain.gt_sem_seg.shape == tuple(plain.ori_shape)


def tta_run(config, data_root, work_dir):
    """Train 2 iterations, then tools/test.py --tta; metrics, rows, log."""
    run_tool(
        TRAIN,
        [
            config,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *train_options(data_root, max_iters=2, val=False),
        ],
    )
    test_dir = osp.join(work_dir, 'tta')
    log = run_tool(
        TEST,
        [
            config,
            osp.join(work_dir, 'iter_2.pth'),
            '--tta',
            '--work-dir',
            test_dir,
            '--per-case',
            osp.join(test_dir, 'cases.csv'),
            '--cfg-options',
            *data_options(data_root),
        ],
    )
    with open(osp.join(test_dir, 'cases.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    return load_metrics(osp.join(test_dir, 'metrics.json')), rows, log


def assert_tta_ran(log):
    """The Runner's config dump shows the wrapped model and TTA pipeline."""
    assert re.search(r"type='SegTTAModel'", log), log[-3000:]
    assert "type='TestTimeAug'" in log


def test_fundus_tta_per_domain_table(tmp_path, fundus_root):
    metrics, rows, log = tta_run(FUNDUS_CONFIG, fundus_root, str(tmp_path))
    assert_tta_ran(log)
    assert re.search(r'Domain1 \(unseen\)', log), log[-3000:]
    domains = ('Domain1', 'Domain2', 'Domain3', 'Domain4')
    for domain in domains:
        # make_fundus(cases=5): 2 test images per domain.
        assert metrics[f'{domain}/n_cases'] == 2
        for structure in ('OD', 'OC'):
            assert 0.0 <= metrics[f'{domain}/{structure}_Dice'] <= 100.0
    assert {row['domain'] for row in rows} == set(domains)
    assert len(rows) == 8 and 'slice_index' not in rows[0]


def test_prostate_tta_reassembles_volumes(tmp_path, prostate_root):
    metrics, rows, log = tta_run(PROSTATE_CONFIG, prostate_root, str(tmp_path))
    assert_tta_ran(log)
    assert re.search(r'RUNMC \(unseen\)', log), log[-3000:]
    # 3 held-out volumes, each rebuilt from its TTA-merged slices.
    assert metrics['RUNMC/n_cases'] == 3
    assert 0.0 <= metrics['RUNMC/Prostate_Dice'] <= 100.0
    assert sorted(row['case_id'] for row in rows) == [
        f'RUNMC/Case{i:02d}' for i in range(3)
    ]
    assert rows[0]['distance_unit'] == 'mm'
