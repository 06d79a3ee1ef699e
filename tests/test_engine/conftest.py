"""Shared fixtures of the engine tests.

Fast path and overlays: built in mmseg's scope, one thread, TF32 settings
put back after each test (``import mmseg_dfq`` first: it installs the
``mmcv.ops`` stand-ins that ``mmseg.models`` needs on mmcv-lite).

Reliability: tiny fundus demo, CPU, 6 iterations. Training runs are
subprocesses of ``tools/train.py`` (they get killed) with
one thread each, ``randomness.deterministic=True``, batches of 3 (one image
per source domain) and a checkpoint every 2 iterations.
"""

import os.path as osp
import subprocess
import sys
import time

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401
from mmseg_dfq.testing.synthetic import make_fundus

from ..test_runtime.conftest import (
    FUNDUS_CONFIG,
    REPO_ROOT,
    TRAIN,
    data_options,
    tool_env,
)

ITERS = 6


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


def train_args(data_root, work_dir, resume=False, extra=()):
    """Arguments of tools/train.py for the short deterministic run."""
    args = [
        FUNDUS_CONFIG,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *data_options(data_root),
        f'train_cfg.max_iters={ITERS}',
        f'train_cfg.val_interval={10 * ITERS}',
        'train_dataloader.batch_size=3',
        'train_dataloader.sampler.domain_counts=[1,1,1]',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.checkpoint.max_keep_ckpts=20',
        'default_hooks.logger.interval=1',
        'randomness.deterministic=True',
        *extra,
    ]
    if resume:
        args.insert(1, '--resume')
    return args


def start(script, args, log_path):
    """Start a tool in the background, its output going to ``log_path``."""
    log = open(log_path, 'w')
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=tool_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_file = log
    return proc


def finish(proc, timeout=300):
    """Wait for a started tool; return (exit status, its output)."""
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log_file.close()
    with open(proc.log_file.name) as f:
        return rc, f.read()


def wait_for(condition, proc, timeout=240, what=''):
    """Poll ``condition()`` until it holds; fail if the process ends."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        if proc.poll() is not None:
            rc, out = finish(proc)
            raise AssertionError(
                f'the run ended (status {rc}) before {what}:\n{out[-3000:]}'
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f'timed out waiting for {what}')


def log_has(proc, text):
    """A condition: ``text`` appeared in the run's output."""

    def check():
        with open(proc.log_file.name) as f:
            return text in f.read()

    return check


def weights(path):
    """The model weights of a checkpoint."""
    return torch.load(path, map_location='cpu', weights_only=True)[
        'state_dict'
    ]


def assert_same_weights(a, b):
    """Bitwise-equal state dicts."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = {
        k: float((wa[k].double() - wb[k].double()).abs().max())
        for k in wa
        if not torch.equal(wa[k], wb[k])
    }
    assert not differ, f'{len(differ)} tensors differ, e.g. ' + str(
        dict(list(differ.items())[:3])
    )


@pytest.fixture(scope='session')
def tiny_fundus(tmp_path_factory):
    """Generated fundus data: 4 domains, 3 train + 2 test images of 64 px."""
    root = str(tmp_path_factory.mktemp('data') / 'fundus')
    make_fundus(root, seed=0, cases=5, size=64)
    return root


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, tiny_fundus):
    """The uninterrupted run: its work dir (iter_2/4/6.pth)."""
    work_dir = str(tmp_path_factory.mktemp('reference'))
    proc = start(
        TRAIN,
        train_args(tiny_fundus, work_dir),
        osp.join(work_dir, 'out.log'),
    )
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    for k in range(2, ITERS + 1, 2):
        assert osp.isfile(osp.join(work_dir, f'iter_{k}.pth'))
    return work_dir
