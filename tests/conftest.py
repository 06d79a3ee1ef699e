"""Fixtures shared by every test folder.

``import mmseg_dfq`` comes first: it installs the ``mmcv.ops`` stand-ins
that ``mmseg.models`` needs on mmcv-lite (test modules import
``mmseg.models`` at collection time, and the import sorter would place the
plugin after it inside a module), and it registers the DFQ components.

Helpers that test modules import (paths, ``run_tool``, ``free_port``...)
live in ``tests/helpers.py``: conftest modules are not meant to be
imported. A folder's own ``conftest.py`` keeps only what that folder uses.
"""

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401
from mmseg_dfq.testing.synthetic import make_fundus, make_prostate


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
