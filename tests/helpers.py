"""Paths, constants and helpers shared by the test folders.

A plain module, not a conftest: pytest discourages importing conftest
modules (they are plugins, loaded once per directory), so the test modules
import these names from here (``from ..helpers import run_tool``) and get
the shared fixtures (generated data, the one-thread and mmseg-scope
settings) from ``tests/conftest.py``.

The tools run as subprocesses with one thread each: on a 2-core machine
shared with other processes, two OpenMP threads per process wait on each
other and a training step takes seconds instead of a tenth of one.
"""

import json
import math
import os
import os.path as osp
import signal
import socket
import subprocess
import sys

import torch
from mmengine.config import Config

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FUNDUS_CONFIG = osp.join(REPO_ROOT, 'configs/dfq/dfq_mit-tiny_demo_fundus.py')
PROSTATE_CONFIG = osp.join(
    REPO_ROOT, 'configs/dfq/dfq_mit-tiny_demo_prostate.py'
)
DATASET_CONFIG_DIR = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets')
TRAIN = osp.join(REPO_ROOT, 'tools/train.py')
TEST = osp.join(REPO_ROOT, 'tools/test.py')
DIST_TRAIN = osp.join(REPO_ROOT, 'tools/dist_train.sh')
DIST_TEST = osp.join(REPO_ROOT, 'tools/dist_test.sh')
# Train iterations of the shared runs; one checkpoint every 2 iterations.
TRAIN_ITERS = 6


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


def run_status(cmd, cwd=REPO_ROOT, timeout=300, env=None):
    """Run any command; return its exit status and output.

    Args:
        cmd (list): The command; items are turned into strings.
        cwd (str): Working directory. Default: the repo root.
        timeout (float): Seconds before the run counts as hung.
            Default: 300.
        env (dict, optional): Environment; :func:`tool_env` if None.

    Returns:
        tuple[int, str]: The status, and stdout and stderr interleaved.
    """
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=tool_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout


def run(cmd, cwd=REPO_ROOT, timeout=300, env=None):
    """Run any command; return its output, failing with its tail.

    Args: as :func:`run_status`.

    Returns:
        str: stdout and stderr of the run, interleaved.
    """
    status, out = run_status(cmd, cwd, timeout, env)
    assert status == 0, (
        f'{" ".join(map(str, cmd))} exited with {status}:\n{out[-4000:]}'
    )
    return out


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


def run_dist_script(script, positional, nproc, args, bin_dir, timeout=300):
    """Run ``tools/dist_train.sh`` or ``dist_test.sh`` as a user does.

    The scripts call ``torchrun`` from ``PATH``: a ``torchrun`` in
    ``bin_dir`` that runs ``python -m torch.distributed.run`` with this
    interpreter comes first, so the workers import the same packages as the
    tests whatever the install layout. The run gets a process group of its
    own, so that a timeout also ends torchrun's workers.

    Args:
        script (str): :data:`DIST_TRAIN` or :data:`DIST_TEST`.
        positional (list[str]): The script's arguments before the number of
            processes (config; config and checkpoint).
        nproc (int): Processes.
        args (list[str]): Arguments passed on to the Python tool.
        bin_dir (str): Directory for the ``torchrun`` shim (created).
        timeout (float): Seconds before the run counts as hung.
            Default: 300.

    Returns:
        str: stdout and stderr of the run, interleaved.
    """
    os.makedirs(bin_dir, exist_ok=True)
    shim = osp.join(bin_dir, 'torchrun')
    with open(shim, 'w') as f:
        f.write(
            f'#!/bin/sh\nexec {sys.executable} -m torch.distributed.run "$@"\n'
        )
    os.chmod(shim, 0o755)
    env = tool_env()
    env['PATH'] = os.pathsep.join((bin_dir, env.get('PATH', '')))
    env['PORT'] = str(free_port())
    cmd = ['bash', script, *map(str, positional), str(nproc), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(
            f'{" ".join(cmd)} ran over {timeout} s; output tail:\n'
            f'{out[-4000:]}'
        ) from None
    assert proc.returncode == 0, (
        f'{" ".join(cmd)} exited with {proc.returncode}; output tail:\n'
        f'{out[-4000:]}'
    )
    return out


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


def train_args(data_root, work_dir, resume=False, extra=()):
    """Arguments of tools/train.py for the short deterministic fundus run.

    6 iterations (:data:`TRAIN_ITERS`), batches of 3 (one image per source
    domain), ``randomness.deterministic=True``, a checkpoint every 2
    iterations and validation only at the end (mmengine validates at the
    last iteration whatever the interval): the run that resumed runs must
    reproduce bit for bit, and the shared 2-process run of
    ``tests/conftest.py``.

    Args:
        data_root (str): Generated fundus data.
        work_dir (str): Work dir of the run.
        resume (bool): Add ``--resume``. Default: False.
        extra (Sequence[str]): More ``--cfg-options``. Default: none.

    Returns:
        list[str]: Config path first, then the options.
    """
    args = [
        FUNDUS_CONFIG,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *data_options(data_root),
        f'train_cfg.max_iters={TRAIN_ITERS}',
        f'train_cfg.val_interval={10 * TRAIN_ITERS}',
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


def load_base_config(name):
    """Load ``configs/_base_/datasets/<name>.py``."""
    return Config.fromfile(osp.join(DATASET_CONFIG_DIR, f'{name}.py'))


def write_checkpoint(config, path, metainfo, seed=0):
    """Save an initialised (untrained) model of ``config`` as a checkpoint.

    The inference tests compare what different entry points predict for
    the same input, which needs a model whose prediction varies over the
    image, not a good one: the head's classifier is scaled up so that the
    arg-max is not one class everywhere.

    Args:
        config (str): Config file.
        path (str): Checkpoint file to write.
        metainfo (dict): The dataset's classes and palette, kept in the
            checkpoint's meta as mmengine's Runner does.
        seed (int): Seed of the initialisation. Default: 0.

    Returns:
        str: ``path``.
    """
    from mmseg.apis import init_model

    torch.manual_seed(seed)
    model = init_model(config, None, device='cpu')
    model.init_weights()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(30.0)
    torch.save(
        dict(
            meta=dict(dataset_meta=dict(metainfo)),
            state_dict=model.state_dict(),
        ),
        path,
    )
    return path


def mmseg_tool(name):
    """Path of mmseg's packaged ``tools/<name>``."""
    import mmseg

    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', name)
    assert osp.isfile(path), f'mmseg does not ship {path}'
    return path


def weights(path):
    """The model weights of a checkpoint."""
    return torch.load(path, map_location='cpu', weights_only=True)[
        'state_dict'
    ]


def assert_same_weights(a, b):
    """Bitwise-equal state dicts of two checkpoint files."""
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


def tiny_rdwt_mit(**overrides):
    """A two-stage RDWT MiT backbone config (8 and 16 channels), for tests
    that need a real DFQ model small enough to compile or trace on CPU."""
    return dict(
        dict(
            type='RDWTMixVisionTransformer',
            embed_dims=8,
            num_stages=2,
            num_layers=[1, 1],
            num_heads=[1, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
            sr_ratios=[8, 4],
            out_indices=(0, 1),
            rdwt_stages=(0, 1),
        ),
        **overrides,
    )


def tiny_dfq_head(**overrides):
    """A DFQHead config for :func:`tiny_rdwt_mit` (levels of 8 and 16
    channels, one query block), BN and cross-entropy."""
    return dict(
        dict(
            type='DFQHead',
            in_channels=[8, 16],
            in_index=[0, 1],
            channels=16,
            num_heads=(1,),
            num_classes=3,
            norm_cfg=dict(type='BN', requires_grad=True),
            loss_decode=dict(type='CrossEntropyLoss'),
        ),
        **overrides,
    )


def count_calls(monkeypatch, owner, name):
    """Record the first argument of every call to ``owner.name`` (as str).

    The function still runs; ``monkeypatch.undo()`` or the end of the test
    puts it back.

    Returns:
        list[str]: Filled as the calls happen.
    """
    calls = []
    real = getattr(owner, name)

    def counting(first, *args, **kwargs):
        calls.append(str(first))
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls
