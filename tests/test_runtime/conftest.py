"""Shared data, runs and helpers of the runtime tests.

``import mmseg_dfq`` comes first: it installs the ``mmcv.ops`` stand-ins
that ``mmseg.models`` needs on mmcv-lite, and test modules import
``mmseg.models`` at collection time.

The tools run as subprocesses with one thread each: on a 2-core machine
shared with other processes, two OpenMP threads per process wait on each
other and a training step takes seconds instead of a tenth of one.
"""

import json
import math
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401
from mmseg_dfq.testing.synthetic import make_fundus, make_prostate

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FUNDUS_CONFIG = osp.join(REPO_ROOT, 'configs/dfq/dfq_mit-tiny_demo_fundus.py')
PROSTATE_CONFIG = osp.join(
    REPO_ROOT, 'configs/dfq/dfq_mit-tiny_demo_prostate.py'
)
TRAIN = osp.join(REPO_ROOT, 'tools/train.py')
TEST = osp.join(REPO_ROOT, 'tools/test.py')
# Train iterations of the shared runs; one checkpoint every 2 iterations.
TRAIN_ITERS = 6


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build configs in mmseg's scope, as the Runner does."""
    init_default_scope('mmseg')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Run in-process models on one thread (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port():
    """Return a TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tool_env():
    """Environment of a tool subprocess: the repo importable, one thread."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p
    )
    env['OMP_NUM_THREADS'] = '1'
    env['MKL_NUM_THREADS'] = '1'
    return env


def run_tool(script, args, nproc=1, timeout=300):
    """Run a tool from the repo root, with torchrun when ``nproc`` > 1.

    Args:
        script (str): Path of the tool (``tools/train.py``...).
        args (list[str]): Its arguments.
        nproc (int): Processes; > 1 starts ``torchrun --nproc_per_node``
            with ``--launcher pytorch``. Default: 1.
        timeout (float): Seconds before the run counts as hung.
            Default: 300.

    Returns:
        str: stdout and stderr of the run, interleaved.

    Raises:
        AssertionError: If the run fails, with the tail of its output.
    """
    if nproc > 1:
        cmd = [
            sys.executable,
            '-m',
            'torch.distributed.run',
            f'--nproc_per_node={nproc}',
            f'--master_port={free_port()}',
            script,
            *args,
            '--launcher',
            'pytorch',
        ]
    else:
        cmd = [sys.executable, script, *args]
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout or ''
        if isinstance(out, bytes):
            out = out.decode(errors='replace')
        raise AssertionError(
            f'{" ".join(cmd)} ran over {timeout} s; output tail:\n'
            f'{out[-4000:]}'
        ) from err
    assert proc.returncode == 0, (
        f'{" ".join(cmd)} exited with {proc.returncode}; output tail:\n'
        f'{proc.stdout[-4000:]}'
    )
    return proc.stdout


def data_options(data_root):
    """``--cfg-options`` pointing all three dataloaders at ``data_root``."""
    return [
        f'{loader}.dataset.data_root={data_root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]


def train_options(data_root, max_iters=TRAIN_ITERS, val=True):
    """``--cfg-options`` for a short demo run with a checkpoint every 2."""
    return [
        *data_options(data_root),
        f'train_cfg.max_iters={max_iters}',
        # Validation once, at the end (or never).
        f'train_cfg.val_interval={max_iters if val else 10 * max_iters}',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.checkpoint.max_keep_ckpts=10',
        'default_hooks.logger.interval=1',
    ]


def load_metrics(path):
    """Read a metrics JSON written by ``tools/test.py``."""
    assert osp.isfile(path), f'{path} was not written'
    with open(path) as f:
        return json.load(f)


def assert_metrics_equal(a, b, tol=1e-6):
    """Assert two metric dicts have the same keys and values (None == NaN).

    Args:
        a (dict): Metrics of one run.
        b (dict): Metrics of the other.
        tol (float): Absolute tolerance. Default: 1e-6.
    """
    assert set(a) == set(b), set(a) ^ set(b)
    differ = {}
    for key in a:
        x, y = a[key], b[key]
        x_nan = x is None or (isinstance(x, float) and math.isnan(x))
        y_nan = y is None or (isinstance(y, float) and math.isnan(y))
        if x_nan or y_nan:
            if x_nan != y_nan:
                differ[key] = (x, y)
        elif abs(x - y) > tol:
            differ[key] = (x, y)
    assert not differ, differ


@pytest.fixture(scope='session')
def fundus_root(tmp_path_factory):
    """Generated fundus data: 4 domains, 3 train + 2 test images of 64 px."""
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
    """2-process training + validation of the fundus demo.

    Returns:
        tuple[str, str]: Work dir and the torchrun output.
    """
    work_dir = str(tmp_path_factory.mktemp('fundus_dist'))
    out = run_tool(
        TRAIN,
        [
            FUNDUS_CONFIG,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *train_options(fundus_root),
        ],
        nproc=2,
    )
    return work_dir, out
