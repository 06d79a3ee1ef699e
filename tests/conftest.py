"""Fixtures shared by every test folder.

``import mmseg_dfq`` comes first: it installs the ``mmcv.ops`` stand-ins
that ``mmseg.models`` needs on mmcv-lite (test modules import
``mmseg.models`` at collection time, and the import sorter would place the
plugin after it inside a module), and it registers the DFQ components.

Helpers that test modules import (paths, ``run_tool``, ``free_port``...)
live in ``tests/helpers.py``: conftest modules are not meant to be
imported. A folder's own ``conftest.py`` keeps only what that folder uses.
"""

import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401
from mmseg_dfq.testing.synthetic import make_fundus, make_prostate

from .helpers import DIST_TRAIN, run_dist_script, train_args


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build configs in mmseg's scope, as the Runner and mmseg's APIs do."""
    init_default_scope('mmseg')


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    """One thread for in-process models: the test machines are small and
    shared, and two OpenMP threads per process on 2 busy cores wait on each
    other (a training step takes seconds instead of a tenth of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def fundus_root(tmp_path_factory):
    """Generated fundus data: 4 domains, 3 train + 2 test images of 64 px.

    Generated once a session for the runtime, engine and API tests.
    """
    root = str(tmp_path_factory.mktemp('data') / 'fundus')
    make_fundus(root, seed=0, cases=5, size=64)
    return root


@pytest.fixture(scope='session')
def prostate_root(tmp_path_factory):
    """Generated prostate data: 6 sites, 3 volumes of 64 px x 4-6 slices.

    RUNMC (the held-out site) has 3 volumes of 5 slices: 15 slices, an odd
    number, so 2 processes get unequal shares and the volumes are split
    across ranks.
    """
    root = str(tmp_path_factory.mktemp('data') / 'prostate')
    make_prostate(root, seed=0, cases=3, size=64, slices=(4, 6))
    return root


@pytest.fixture(scope='session')
def fundus_dist_run(tmp_path_factory, fundus_root):
    """The suite's one 2-process training: ``tools/dist_train.sh``, gloo.

    The deterministic run of :func:`tests.helpers.train_args` (6
    iterations, checkpoints at 2, 4 and 6, validation at the end), started
    by ``tools/dist_train.sh CONFIG 2`` as a user starts it. The compat
    tests read its log and checkpoints, the end-to-end tests test its last
    checkpoint with one and two processes, and the resume tests restart it
    from ``iter_2.pth``.

    Returns:
        tuple[str, str]: Work dir and the output of the run.
    """
    root = tmp_path_factory.mktemp('fundus_dist')
    work_dir = str(root / 'work')
    args = train_args(fundus_root, work_dir)
    out = run_dist_script(
        DIST_TRAIN, [args[0]], 2, args[1:], bin_dir=str(root / 'bin')
    )
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth')), out[-3000:]
    return work_dir, out
