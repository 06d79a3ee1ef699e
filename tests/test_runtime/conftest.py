"""The 2-process run shared by the runtime tests (one torchrun training)."""

import pytest

from ..helpers import FUNDUS_CONFIG, TRAIN, run_tool, train_options


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
