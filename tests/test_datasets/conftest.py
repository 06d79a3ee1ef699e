"""Synthetic data of the dataset tests (generated once a session).

These override the suite's tiny ``fundus_root`` / ``prostate_root``: the
dataset tests count samples of the generator's default sizes.
"""

import pytest

from mmseg_dfq.testing.synthetic import make_fundus, make_prostate


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
