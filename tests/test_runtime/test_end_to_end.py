"""tools/train.py and tools/test.py end to end on generated data.

The demo configs train for a few iterations on generated fundus (2D, four
domains) and prostate (3D NIfTI volumes) data, then tools/test.py evaluates
the last checkpoint and writes the metrics JSON. Interrupted runs resume
from their last checkpoint, and a test with two processes reports exactly
what one process reports: every sample once, prostate volumes reassembled
from slices that the two ranks evaluated separately.
"""

import csv
import os.path as osp
import re

import numpy as np
import pytest

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    TEST,
    TRAIN,
    TRAIN_ITERS,
    assert_metrics_equal,
    data_options,
    load_metrics,
    run_tool,
    train_options,
)

FUNDUS_DOMAINS = ('Domain1', 'Domain2', 'Domain3', 'Domain4')
# make_fundus(cases=5) puts 2 images of each domain in the test split.
FUNDUS_TEST_CASES = 2
# make_prostate(cases=3): the held-out RUNMC site has 3 volumes.
PROSTATE_TEST_CASES = 3
METRICS = ('Dice', 'ASD', 'HD95')


def last_checkpoint(work_dir):
    """The checkpoint that mmengine's ``last_checkpoint`` file names."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        path = f.read().strip()
    assert osp.isfile(path), path
    return path


def evaluate_checkpoint(config, checkpoint, data_root, work_dir, nproc=1):
    """Run tools/test.py; return (metrics dict, per-case CSV rows)."""
    json_path = osp.join(work_dir, 'metrics.json')
    csv_path = osp.join(work_dir, 'cases.csv')
    run_tool(
        TEST,
        [
            config,
            checkpoint,
            '--work-dir',
            work_dir,
            '--per-case',
            csv_path,
            '--cfg-options',
            *data_options(data_root),
        ],
        nproc=nproc,
    )
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    return load_metrics(json_path), rows


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
def fundus_run(tmp_path_factory, fundus_root):
    """One-process fundus training (validation at the end) and its test."""
    work_dir = str(tmp_path_factory.mktemp('fundus_run'))
    log = run_tool(
        TRAIN,
        [
            FUNDUS_CONFIG,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *train_options(fundus_root),
        ],
    )
    checkpoint = last_checkpoint(work_dir)
    metrics, rows = evaluate_checkpoint(
        FUNDUS_CONFIG, checkpoint, fundus_root, osp.join(work_dir, 'test')
    )
    return dict(work_dir=work_dir, log=log, metrics=metrics, rows=rows)


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
    metrics, rows = evaluate_checkpoint(
        PROSTATE_CONFIG, checkpoint, prostate_root, osp.join(work_dir, 'test')
    )
    return dict(
        work_dir=work_dir,
        log=log,
        checkpoint=checkpoint,
        metrics=metrics,
        rows=rows,
    )


def test_fundus_train_validate_test(fundus_run):
    work_dir, log = fundus_run['work_dir'], fundus_run['log']
    assert osp.basename(last_checkpoint(work_dir)) == f'iter_{TRAIN_ITERS}.pth'
    assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in log
    # Validation ran once, on the held-out Domain1 only.
    assert re.search(r'Iter\(val\) \[2/2\].*Domain1/OD_Dice', log), log[-3000:]
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
    # Only the held-out site is tested, so there is no seen/unseen split
    # (no mean_unseen group) and the mean is RUNMC's.
    domains = {key.split('/')[0] for key in metrics}
    assert domains == {'RUNMC', 'mean'}, domains
    for name in METRICS:
        key = f'Prostate_{name}'
        assert metrics[f'mean/{key}'] == metrics[f'RUNMC/{key}']

    # 3D: one row per volume, not per slice.
    rows = prostate_run['rows']
    assert sorted(row['case_id'] for row in rows) == [
        f'RUNMC/Case{i:02d}' for i in range(PROSTATE_TEST_CASES)
    ]
    check_cases_against_metrics(rows, metrics, 'Prostate')


def test_resume_after_interruption(tmp_path, fundus_root):
    work_dir = str(tmp_path / 'work')
    common = [FUNDUS_CONFIG, '--work-dir', work_dir, '--cfg-options']
    # The "interrupted" run: stops after its first checkpoint.
    run_tool(TRAIN, common + train_options(fundus_root, 2, val=False))
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    assert not osp.exists(osp.join(work_dir, 'iter_4.pth'))

    log = run_tool(
        TRAIN,
        [
            FUNDUS_CONFIG,
            '--work-dir',
            work_dir,
            '--resume',
            '--cfg-options',
            *train_options(fundus_root, 4, val=False),
        ],
    )
    assert re.search(r'resumed epoch: \d+, iter: 2\b', log), log[-3000:]
    assert 'iter_2.pth' in log
    # Iterations 1 and 2 are not run again.
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [4/4]' in log
    assert 'Iter(train) [1/4]' not in log
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))
    assert last_checkpoint(work_dir).endswith('iter_4.pth')


def test_two_process_training_then_test_matches_one_process(
    fundus_dist_run, fundus_root
):
    work_dir, log = fundus_dist_run
    assert re.search(r'Iter\(val\).*Domain1/OD_Dice', log), log[-3000:]
    checkpoint = last_checkpoint(work_dir)
    assert osp.basename(checkpoint) == f'iter_{TRAIN_ITERS}.pth'

    one, rows_one = evaluate_checkpoint(
        FUNDUS_CONFIG, checkpoint, fundus_root, osp.join(work_dir, 'test1')
    )
    two, rows_two = evaluate_checkpoint(
        FUNDUS_CONFIG,
        checkpoint,
        fundus_root,
        osp.join(work_dir, 'test2'),
        nproc=2,
    )
    # 8 test images on 2 ranks: each image exactly once in the results.
    assert len(rows_two) == len(FUNDUS_DOMAINS) * FUNDUS_TEST_CASES
    key = lambda row: row['case_id']  # noqa: E731
    assert sorted(rows_two, key=key) == sorted(rows_one, key=key)
    for domain in FUNDUS_DOMAINS:
        assert two[f'{domain}/n_cases'] == FUNDUS_TEST_CASES
    assert_metrics_equal(one, two)


def test_prostate_two_process_test_matches_one_process(
    prostate_run, prostate_root
):
    two, rows = evaluate_checkpoint(
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
