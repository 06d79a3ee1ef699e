"""Shared fixtures of the engine tests (fast path, overlays).

``import mmseg_dfq`` first: it installs the ``mmcv.ops`` stand-ins that
``mmseg.models`` needs on mmcv-lite.
"""

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401


def pytest_configure(config):
    config.addinivalue_line(
        'markers',
        'compile: runs torch.compile with inductor on CPU (gcc); tens of '
        'seconds on one core',
    )


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build configs in mmseg's scope, as the Runner does."""
    init_default_scope('mmseg')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One OpenMP thread: the CI/dev machines are small and shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
