"""Epoch loop: a mid-epoch resume repeats the uninterrupted run exactly.

In-process runs of the fundus demo with ``EpochBasedTrainLoop`` (3 epochs
of 3 batches of 3 images), a checkpoint every 2 iterations (mid-epoch and
epoch-end ones). The resumed run uses 2 persistent dataloader workers, the
uninterrupted one none: per-draw augmentation seeds make them equal.
"""

import os.path as osp
import shutil

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from mmseg_dfq.engine.resume_hook import domain_mix_sampler

from ..helpers import FUNDUS_CONFIG, assert_same_weights, data_options

EPOCHS = 3


def _runner(data_root, work_dir, workers, resume_from=None):
    init_default_scope('mmseg')
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.merge_from_dict(dict(a.split('=', 1) for a in data_options(data_root)))
    cfg.work_dir = work_dir
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop', max_epochs=EPOCHS, val_interval=100
    )
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.param_scheduler = [
        dict(
            type='PolyLR',
            power=0.9,
            eta_min=0.0,
            begin=0,
            end=EPOCHS,
            by_epoch=True,
            convert_to_iter_based=True,
        )
    ]
    cfg.train_dataloader.batch_size = 3
    cfg.train_dataloader.sampler.domain_counts = {2: 1, 3: 1, 4: 1}
    # The demo's sampler runs on for its iteration loop; epochs end here.
    cfg.train_dataloader.sampler.infinite = False
    cfg.train_dataloader.num_workers = workers
    cfg.train_dataloader.persistent_workers = workers > 0
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', by_epoch=False, interval=2, max_keep_ckpts=20
    )
    cfg.custom_hooks = [dict(type='ExactResumeHook')]
    cfg.randomness = dict(seed=0, deterministic=True)
    if resume_from is not None:
        cfg.load_from = resume_from
        cfg.resume = True
    return Runner.from_cfg(cfg)


def test_infinite_sampler_refused_by_the_epoch_loop(tmp_path, fundus_root):
    runner = _runner(fundus_root, str(tmp_path), 0)
    domain_mix_sampler(runner.train_dataloader).infinite = True
    with pytest.raises(ValueError, match='infinite=False'):
        runner.train()


@pytest.mark.parametrize('stop', [4, 6])  # mid-epoch 1, end of epoch 1
def test_epoch_loop_resume_with_workers(tmp_path_factory, fundus_root, stop):
    full = str(tmp_path_factory.getbasetemp() / 'epoch_full')
    last = osp.join(full, 'iter_9.pth')
    if not osp.isfile(last):
        runner = _runner(fundus_root, full, workers=0)
        sampler = domain_mix_sampler(runner.train_dataloader)
        assert sampler.epoch_batches == 3
        runner.train()
    resumed = str(tmp_path_factory.mktemp(f'epoch_resumed_{stop}'))
    start = osp.join(resumed, f'iter_{stop}.pth')
    shutil.copy(osp.join(full, f'iter_{stop}.pth'), start)
    runner = _runner(fundus_root, resumed, workers=2, resume_from=start)
    runner.train()
    assert runner.iter == 3 * EPOCHS
    assert_same_weights(last, osp.join(resumed, 'iter_9.pth'))
