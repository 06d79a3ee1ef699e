"""Fixtures of the engine tests.

Fast path and overlays: TF32 settings put back after each test.
Reliability: the uninterrupted reference run of
:func:`tests.helpers.train_args`, which the resumed runs must equal.
"""

import os.path as osp

import pytest
import torch

from ..helpers import TRAIN, TRAIN_ITERS, train_args
from .train_runs import finish, start


def pytest_configure(config):
    config.addinivalue_line(
        'markers',
        'compile: runs torch.compile with inductor on CPU (gcc); tens of '
        'seconds on one core',
    )


@pytest.fixture(autouse=True)
def keep_fp32_precision():
    """FastPathHook turns TF32 on process-wide; put it back after a test."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, 'fp32_precision'):
        yield
        return
    conv = torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    yield
    matmul.fp32_precision, conv.fp32_precision = before


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, fundus_root):
    """The uninterrupted run: its work dir (iter_2/4/6.pth)."""
    work_dir = str(tmp_path_factory.mktemp('reference'))
    proc = start(
        TRAIN,
        train_args(fundus_root, work_dir),
        osp.join(work_dir, 'out.log'),
    )
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    for k in range(2, TRAIN_ITERS + 1, 2):
        assert osp.isfile(osp.join(work_dir, f'iter_{k}.pth'))
    return work_dir
