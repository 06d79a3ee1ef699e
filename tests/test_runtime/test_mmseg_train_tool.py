"""The domain mix is enforced when mmseg's own ``tools/train.py`` trains.

mmseg's packaged train script (what ``mim train mmseg`` runs) knows
nothing of this plugin: it reads the config and builds mmengine's Runner.
The check that ``batch_size`` is the sum of the per-domain counts has to
come from the config's registered ``DomainMixBatchSampler`` then, not from
our tools.
"""

import os.path as osp
import subprocess
import sys

import mmseg

from ..helpers import FUNDUS_CONFIG, data_options, tool_env

MMSEG_TRAIN = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py'
)


def _mmseg_train(work_dir, options):
    """Run mmseg's tools/train.py on the fundus demo; (returncode, output)."""
    assert osp.isfile(MMSEG_TRAIN), f'mmseg does not ship {MMSEG_TRAIN}'
    proc = subprocess.run(
        [
            sys.executable,
            MMSEG_TRAIN,
            FUNDUS_CONFIG,
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *options,
        ],
        cwd=str(work_dir.parent),
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout


def _options(data_root, batch_size):
    # The demo's mix is {2: 3, 3: 6, 4: 7}: batches of 16.
    return [
        *data_options(data_root),
        f'train_dataloader.batch_size={batch_size}',
        'train_cfg.max_iters=2',
        'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
    ]


def test_wrong_batch_size_stops_mmseg_train(tmp_path, fundus_root):
    work_dir = tmp_path / 'wrong'
    # Without our hooks either (ExactResumeHook checks the batch too, at
    # before_train): the batch sampler stops the run on its own.
    options = [*_options(fundus_root, 8), 'custom_hooks=[]']
    code, out = _mmseg_train(work_dir, options)
    assert code != 0, out[-3000:]
    assert 'ValueError: DomainMixSampler counts' in out, out[-3000:]
    assert 'sum to 16, but the dataloader batch_size is 8' in out
    # Raised while mmengine builds the dataloader's batch sampler.
    assert 'build_dataloader' in out
    # Stopped before training: no iteration logged, nothing saved.
    assert 'Iter(train)' not in out
    assert not list(work_dir.glob('*.pth'))


def test_right_batch_size_trains_under_mmseg_train(tmp_path, fundus_root):
    work_dir = tmp_path / 'right'
    code, out = _mmseg_train(work_dir, _options(fundus_root, 16))
    assert code == 0, out[-3000:]
    assert 'Iter(train) [2/2]' in out, out[-3000:]
    assert (work_dir / 'iter_2.pth').is_file()
