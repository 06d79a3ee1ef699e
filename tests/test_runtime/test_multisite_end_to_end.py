"""The README's "Your own multi-site data" example, end to end.

tools/generate_synthetic.py writes three hospitals' data in the
MultiSiteDataset layout (2D images with 0/255 masks, or NIfTI volumes with
label volumes); the worked-example configs train a tiny model for a few
iterations with tools/train.py, and tools/test.py prints the per-domain
table (the held-out hospital marked unseen) and writes the metrics.
"""

import os.path as osp
import subprocess
import sys

import pytest

from ..helpers import (
    REPO_ROOT,
    TEST,
    TRAIN,
    load_metrics,
    run_tool,
    tool_env,
)

GENERATE = osp.join(REPO_ROOT, 'tools/generate_synthetic.py')
CONFIGS = {
    'image': 'configs/multisite/dfq_mit-tiny_demo_multisite-2d.py',
    'nifti': 'configs/multisite/dfq_mit-tiny_demo_multisite-nifti.py',
}
# structure, unit of the distances, cases per hospital
EXPECT = {'image': ('Disc', 'px', 4), 'nifti': ('Prostate', 'mm', 2)}
HOSPITALS = ('HospitalA', 'HospitalB', 'HospitalC')


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_generate_train_test(kind, tmp_path):
    structure, unit, cases = EXPECT[kind]
    root = str(tmp_path / 'data')
    subprocess.run(
        [
            sys.executable,
            GENERATE,
            'multisite',
            '--file-kind',
            kind,
            '--cases',
            str(cases),
            '--out',
            root,
        ],
        cwd=REPO_ROOT,
        env=tool_env(),
        check=True,
        capture_output=True,
    )
    config = osp.join(REPO_ROOT, CONFIGS[kind])
    data = [
        f'{loader}.dataset.data_root={root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    work_dir = str(tmp_path / 'work')
    run_tool(
        TRAIN,
        [
            config,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *data,
            'train_cfg.max_iters=3',
            'train_cfg.val_interval=3',
            'default_hooks.checkpoint.interval=3',
        ],
    )
    checkpoint = osp.join(work_dir, 'iter_3.pth')
    assert osp.isfile(checkpoint)
    out = run_tool(
        TEST,
        [config, checkpoint, '--work-dir', work_dir, '--cfg-options', *data],
    )
    # The per-domain table: every hospital, the held-out one unseen.
    assert f'{structure} Dice (%)' in out and f'ASD ({unit})' in out
    assert '| HospitalA (unseen) |' in out
    for seen in HOSPITALS[1:]:
        assert f'|  {seen} (seen)  |' in out
    metrics = load_metrics(osp.join(work_dir, 'metrics.json'))
    for hospital in HOSPITALS:
        assert metrics[f'{hospital}/n_cases'] == cases
        dice = metrics[f'{hospital}/{structure}_Dice']
        assert 0.0 <= dice <= 100.0
    assert f'mean_unseen/{structure}_Dice' in metrics
