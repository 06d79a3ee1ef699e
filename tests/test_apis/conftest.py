"""Checkpoints of the mmseg-API tests.

Initialised (not trained) CPU demo models, see
:func:`tests.helpers.write_checkpoint`.
"""

import pytest

from mmseg_dfq.datasets import FundusDGDataset, ProstateDGDataset

from ..helpers import FUNDUS_CONFIG, PROSTATE_CONFIG, write_checkpoint


@pytest.fixture(scope='session')
def fundus_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('api_ckpt') / 'fundus.pth'
    return write_checkpoint(FUNDUS_CONFIG, str(path), FundusDGDataset.METAINFO)


@pytest.fixture(scope='session')
def prostate_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('api_ckpt') / 'prostate.pth'
    return write_checkpoint(
        PROSTATE_CONFIG, str(path), ProstateDGDataset.METAINFO
    )
