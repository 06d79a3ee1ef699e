"""Data, checkpoints and helpers of the mmseg-API tests.

The checkpoints are initialised (not trained) CPU demo models: the tests
compare what different entry points predict for the same input, which needs
a model whose prediction varies over the image, not a good one. The head's
classifier is scaled up so that the arg-max is not one class everywhere.
"""

import os
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401  (before mmseg.models: mmcv.ops stand-ins)
from mmseg_dfq.datasets import FundusDGDataset, ProstateDGDataset
from mmseg_dfq.testing.synthetic import make_fundus, make_prostate

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FUNDUS_CFG = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_fundus.py')
PROSTATE_CFG = osp.join(
    REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_prostate.py'
)


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build configs in mmseg's scope, as mmseg's APIs do."""
    init_default_scope('mmseg')


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    """One thread: the test machines are small and shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tool_env():
    """Environment of a subprocess: this checkout importable, one thread."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, env.get('PYTHONPATH')) if p
    )
    env['OMP_NUM_THREADS'] = '1'
    env['MKL_NUM_THREADS'] = '1'
    return env


def run(cmd, cwd, timeout=300, env=None):
    """Run a command; return its output, failing with its tail."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=tool_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f'{" ".join(map(str, cmd))} exited with {proc.returncode}:\n'
        f'{proc.stdout[-4000:]}'
    )
    return proc.stdout


def write_checkpoint(config, path, metainfo, seed=0):
    """Save an initialised model of ``config`` as an mmengine checkpoint.

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


@pytest.fixture(scope='session')
def fundus_root(tmp_path_factory):
    """Generated fundus data: 4 domains, 3 train + 2 test images of 64 px."""
    root = str(tmp_path_factory.mktemp('api_data') / 'fundus')
    make_fundus(root, seed=0, cases=5, size=64)
    return root


@pytest.fixture(scope='session')
def prostate_root(tmp_path_factory):
    """Generated prostate data: 6 sites, 2 volumes of 32 px x 3-4 slices."""
    root = str(tmp_path_factory.mktemp('api_data') / 'prostate')
    make_prostate(root, seed=0, cases=2, size=32, slices=(3, 4))
    return root


@pytest.fixture(scope='session')
def fundus_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('api_ckpt') / 'fundus.pth'
    return write_checkpoint(FUNDUS_CFG, str(path), FundusDGDataset.METAINFO)


@pytest.fixture(scope='session')
def prostate_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('api_ckpt') / 'prostate.pth'
    return write_checkpoint(
        PROSTATE_CFG, str(path), ProstateDGDataset.METAINFO
    )


def mmseg_tool(name):
    """Path of mmseg's packaged ``tools/<name>``."""
    import mmseg

    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', name)
    assert osp.isfile(path), f'mmseg does not ship {path}'
    return path
