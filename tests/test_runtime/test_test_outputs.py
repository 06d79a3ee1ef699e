"""mmseg's test.py --out / --show-dir, our --tta --show-dir, save_best.

mmseg's packaged ``tools/test.py`` sets the test evaluator's
``output_dir`` and ``keep_results`` for ``--out`` and turns on the config's
``default_hooks.visualization`` for ``--show-dir``: both work on our
configs, NIfTI slices included. Only the test split is given: a test run
does not need the training data. ``save_best`` on the key the configs
recommend works with the default validation set (the held-out domain).
"""

import glob
import os.path as osp
import re
import sys

import pytest

from mmseg_dfq.datasets import FundusDGDataset, ProstateDGDataset

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    TEST,
    TRAIN,
    data_options,
    load_metrics,
    mmseg_tool,
    run,
    run_tool,
    write_checkpoint,
)

CONFIGS = dict(fundus=FUNDUS_CONFIG, prostate=PROSTATE_CONFIG)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('out_ckpt')
    return dict(
        fundus=write_checkpoint(
            FUNDUS_CONFIG, str(root / 'f.pth'), FundusDGDataset.METAINFO
        ),
        prostate=write_checkpoint(
            PROSTATE_CONFIG, str(root / 'p.pth'), ProstateDGDataset.METAINFO
        ),
    )


def _expected_pngs(task, root):
    """The prediction PNG of every test sample, as DomainMetric names it
    (one folder per domain)."""
    if task == 'fundus':
        names = []
        for k in range(1, 5):
            with open(osp.join(root, f'Domain{k}_test.list')) as f:
                names += [
                    f'Domain{k}/'
                    + osp.splitext(osp.basename(line.split()[0]))[0]
                    + '.png'
                    for line in f
                    if line.strip()
                ]
        return sorted(names)
    import nibabel as nib

    names = []
    for path in glob.glob(osp.join(root, 'RUNMC', 'Case??.nii.gz')):
        stem = osp.basename(path)[: -len('.nii.gz')]
        depth = nib.load(path).shape[2]
        names += [f'RUNMC/{stem}_{k:03d}.png' for k in range(depth)]
    return sorted(names)


def _written(out_dir):
    """The PNGs under ``out_dir``, relative to it."""
    return sorted(
        osp.relpath(p, out_dir)
        for p in glob.glob(osp.join(out_dir, '**', '*.png'), recursive=True)
    )


def _painted(show_dir):
    return glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)


@pytest.mark.parametrize('task', ['fundus', 'prostate'])
def test_mmseg_test_tool_out_and_show_dir(
    task, tmp_path, checkpoints, fundus_root, prostate_root
):
    root = fundus_root if task == 'fundus' else prostate_root
    config = CONFIGS[task]
    out_dir, show_dir = str(tmp_path / 'pred'), str(tmp_path / 'show')
    log = run(
        [
            sys.executable,
            mmseg_tool('test.py'),
            config,
            checkpoints[task],
            '--work-dir',
            tmp_path / 'work',
            '--out',
            out_dir,
            '--show-dir',
            show_dir,
            '--cfg-options',
            f'test_dataloader.dataset.data_root={root}',
            # mmseg's test.py paints every 50th batch; the demo has fewer.
            'default_hooks.visualization.interval=1',
        ],
        # Where the configs' relative demo_data paths do not exist.
        cwd=tmp_path,
    )
    expected = _expected_pngs(task, root)
    assert _written(out_dir) == expected, log[-3000:]
    assert len(_painted(show_dir)) == len(expected), log[-3000:]
    assert re.search(r'Iter\(test\) \[\d+/\d+\].*mean_unseen/', log)


def test_our_test_tool_tta_show_dir_on_prostate(
    tmp_path, checkpoints, prostate_root
):
    show_dir = str(tmp_path / 'show')
    work_dir = str(tmp_path / 'work')
    log = run_tool(
        TEST,
        [
            PROSTATE_CONFIG,
            checkpoints['prostate'],
            '--work-dir',
            work_dir,
            '--tta',
            '--show-dir',
            show_dir,
            '--out',
            str(tmp_path / 'pred'),
            '--cfg-options',
            f'test_dataloader.dataset.data_root={prostate_root}',
        ],
    )
    expected = _expected_pngs('prostate', prostate_root)
    # No batch failed or was reported as left out, every slice painted.
    assert ' - ERROR - ' not in log and 'error: ' not in log, log[-3000:]
    assert 'is left out' not in log, log[-3000:]
    assert 'were left out of the metrics' not in log, log[-3000:]
    assert len(_painted(show_dir)) == len(expected)
    assert _written(str(tmp_path / 'pred')) == expected
    metrics = load_metrics(osp.join(work_dir, 'metrics.json'))
    assert metrics['RUNMC/n_cases'] == 3


def test_save_best_on_the_recommended_key(tmp_path, fundus_root):
    """The key docs/design.md and the schedule recommend, default val set."""
    work_dir = str(tmp_path / 'work')
    log = run_tool(
        TRAIN,
        [
            FUNDUS_CONFIG,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *data_options(fundus_root),
            'train_cfg.max_iters=2',
            'train_cfg.val_interval=2',
            'default_hooks.checkpoint.save_best=mean_unseen/Dice_avg',
            'default_hooks.checkpoint.rule=greater',
        ],
    )
    # The validation set is the held-out Domain1 alone.
    assert re.search(r'Iter\(val\) \[\d+/\d+\] +Domain1/', log), log[-3000:]
    assert 'Domain2/' not in log
    assert osp.isfile(
        osp.join(work_dir, 'best_mean_unseen_Dice_avg_iter_2.pth')
    ), log[-3000:]
