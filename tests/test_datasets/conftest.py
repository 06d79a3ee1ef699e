"""Synthetic data shared by the dataset tests (generated once a session)."""

import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401  (registers the DFQ components)
from mmseg_dfq.testing.synthetic import make_fundus, make_prostate

CONFIG_DIR = osp.join(
    osp.dirname(__file__), '..', '..', 'configs', '_base_', 'datasets'
)


@pytest.fixture(autouse=True, scope='session')
def mmseg_scope():
    """Build configs in mmseg's scope, as the Runner does."""
    init_default_scope('mmseg')


@pytest.fixture(scope='session')
def fundus_root(tmp_path_factory):
    """Default synthetic fundus set: 4 domains, 6 train / 4 test, 96 px."""
    root = str(tmp_path_factory.mktemp('fundus'))
    make_fundus(root, seed=0)
    return root


@pytest.fixture(scope='session')
def prostate_root(tmp_path_factory):
    """Default synthetic prostate set: 6 sites, 3 volumes, 64 px."""
    root = str(tmp_path_factory.mktemp('prostate'))
    make_prostate(root, seed=0)
    return root


def load_base_config(name):
    """Load ``configs/_base_/datasets/<name>.py``."""
    return Config.fromfile(osp.join(CONFIG_DIR, f'{name}.py'))
