"""A NaN in one image names that image; a bad volume does not stop a folder."""

import json
import os.path as osp
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from mmcv.transforms import BaseTransform
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import save_checkpoint
from mmseg.registry import MODELS, TRANSFORMS

from mmseg_dfq.engine import NonFiniteLossError
from mmseg_dfq.testing.synthetic import make_prostate

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    TEST,
    data_options,
    run_status,
)

INFER = osp.join(REPO_ROOT, 'tools/infer.py')


@TRANSFORMS.register_module(name='_TestPoisonImage', force=True)
class _PoisonImage(BaseTransform):
    """Put a NaN into the image whose file name ends with ``name``."""

    def __init__(self, name):
        self.name = name

    def transform(self, results):
        # Every image float32, so that stack_seg_collate can stack them.
        img = results['img'].astype(np.float32)
        if results['img_path'].endswith(self.name):
            img[..., 0] = np.nan
        results['img'] = img
        return results


def _nan_runner(fundus_root, work_dir, action, iters, stacked=False):
    init_default_scope('mmseg')
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.merge_from_dict(
        dict(
            a.split('=', 1)
            for a in data_options(fundus_root)
            + [
                f'work_dir={work_dir}',
            ]
        )
    )
    with open(osp.join(fundus_root, 'Domain2_train.list')) as f:
        poisoned = f.readline().split()[0]
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline.insert(1, dict(type='_TestPoisonImage', name=poisoned))
    cfg.train_cfg.max_iters = iters
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook')
    # Signal handlers stay with the tools (a test process keeps its own).
    cfg.custom_hooks = [
        dict(type='ExactResumeHook'),
        dict(type='NonFiniteLossHook', action=action),
    ]
    cfg.randomness = dict(seed=0)
    if stacked:
        # The fast path's data path: `inputs` is one (B, C, H, W) tensor.
        cfg.train_dataloader.collate_fn = dict(type='stack_seg_collate')
        cfg.model.data_preprocessor.type = 'BatchSegDataPreProcessor'
    return Runner.from_cfg(cfg), osp.join(fundus_root, poisoned)


@pytest.mark.parametrize('stacked', [False, True])
def test_nan_in_one_image_names_it(tmp_path, fundus_root, stacked):
    runner, poisoned_path = _nan_runner(
        fundus_root, str(tmp_path), 'raise', 2, stacked
    )
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    message = str(info.value)
    assert 'iteration 1' in message
    assert f"images with non-finite values: ['{poisoned_path}']" in message
    assert 'decode.loss_ce' in message
    # The step was skipped and nothing was saved.
    assert not list(tmp_path.glob('*.pth'))
    for p in runner.model.parameters():
        assert torch.isfinite(p).all()


def test_nan_steps_skipped_and_counted(tmp_path, fundus_root):
    # Every batch holds the poisoned image (3 of 3 Domain2 images a batch).
    runner, _ = _nan_runner(fundus_root, str(tmp_path), 'skip', 2)
    runner._init_model_weights()
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    hook = next(
        h for h in runner.hooks if type(h).__name__ == 'NonFiniteLossHook'
    )
    assert hook.skipped == 2
    after = runner.model.state_dict()
    for key, value in before.items():
        if value.is_floating_point() and 'running' not in key:
            assert torch.equal(value, after[key]), key
    assert (tmp_path / 'iter_2.pth').is_file()


def test_folder_with_a_too_small_volume(tmp_path):
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(PROSTATE_CONFIG).model)
    ckpt = str(tmp_path / 'model.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(0)
    # 'b' sorts between the good volumes; 4 x 5 x 7 like nibabel's
    # standard.nii.gz.
    for name, shape in (
        ('a_good', (40, 48, 4)),
        ('b_small', (4, 5, 7)),
        ('c_good', (48, 40, 3)),
    ):
        data = rng.normal(size=shape).astype(np.float32)
        nib.save(
            nib.Nifti1Image(data, np.eye(4)), str(folder / f'{name}.nii.gz')
        )
    out_dir = tmp_path / 'out'
    status, out = run_status(
        [
            sys.executable,
            INFER,
            PROSTATE_CONFIG,
            ckpt,
            str(folder),
            '--out',
            str(out_dir),
        ]
    )
    assert status == 1, out[-3000:]
    small = str(folder / 'b_small.nii.gz')
    assert f'error: {small}: its slices are 4 x 5 voxels' in out
    assert 'Traceback' not in out
    for name, shape in (('a_good', (40, 48, 4)), ('c_good', (48, 40, 3))):
        pred = nib.load(str(out_dir / f'{name}_pred.nii.gz'))
        assert pred.shape == shape
    assert not (out_dir / 'b_small_pred.nii.gz').exists()


def test_evaluation_goes_on_past_a_failing_case(tmp_path):
    root = str(tmp_path / 'prostate')
    make_prostate(root, seed=0, cases=3, size=64, slices=(4, 6))
    # The held-out site's second case becomes 4 x 5 x 7: too small.
    bad = osp.join(root, 'RUNMC', 'Case01.nii.gz')
    seg = np.zeros((4, 5, 7), np.uint8)
    seg[1:3, 1:4, 2:5] = 1
    nib.save(nib.Nifti1Image(np.ones((4, 5, 7), np.float32), np.eye(4)), bad)
    nib.save(
        nib.Nifti1Image(seg, np.eye(4)),
        osp.join(root, 'RUNMC', 'Case01_segmentation.nii.gz'),
    )
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(PROSTATE_CONFIG).model)
    ckpt = str(tmp_path / 'model.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    work_dir = str(tmp_path / 'work')
    status, out = run_status(
        [
            sys.executable,
            TEST,
            PROSTATE_CONFIG,
            ckpt,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *data_options(root),
        ]
    )
    assert status == 1, out[-3000:]
    assert f'left out of the metrics: {bad} (7 samples)' in out
    with open(osp.join(work_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    # The two other held-out cases were evaluated.
    assert metrics['RUNMC/n_cases'] == 2


@pytest.mark.parametrize('lagged', [False, True])
def test_nan_skipped_on_device_with_fused_adam(tmp_path, fundus_root, lagged):
    """A fused optimizer skips the step itself, without a host sync.

    Behind FastPathHook's lagged log variables the hook reports each step
    one iteration later, and the last one after the loop.
    """
    init_default_scope('mmseg')
    runner, _ = _nan_runner(fundus_root, str(tmp_path), 'skip', 2)
    # Rebuilt from its config with a fused optimizer (+ the lagging hook).
    cfg = runner.cfg
    cfg.optim_wrapper.optimizer['fused'] = True
    if lagged:
        cfg.custom_hooks.insert(
            0,
            dict(
                type='FastPathHook',
                compile=False,
                channels_last=False,
                tf32=False,
            ),
        )
    runner = Runner.from_cfg(cfg)
    runner._init_model_weights()
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    hook = next(
        h for h in runner.hooks if type(h).__name__ == 'NonFiniteLossHook'
    )
    guard = runner.optim_wrapper.update_params
    assert guard.on_device
    assert hook.skipped == 2
    after = runner.model.state_dict()
    for key, value in before.items():
        if value.is_floating_point():
            # Running statistics are put back as well (torch.where).
            assert torch.equal(value, after[key]), key
    assert not hasattr(runner.optim_wrapper.optimizer, 'found_inf')


def test_nan_raise_lagged_names_the_right_iteration(tmp_path, fundus_root):
    init_default_scope('mmseg')
    runner, poisoned_path = _nan_runner(fundus_root, str(tmp_path), 'raise', 2)
    cfg = runner.cfg
    cfg.optim_wrapper.optimizer['fused'] = True
    cfg.custom_hooks.insert(
        0,
        dict(
            type='FastPathHook', compile=False, channels_last=False, tf32=False
        ),
    )
    runner = Runner.from_cfg(cfg)
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    message = str(info.value)
    # Found at iteration 2, about iteration 1, whose step was skipped.
    assert 'iteration 1:' in message
    assert f"images with non-finite values: ['{poisoned_path}']" in message
    assert 'step skipped' in message
    for p in runner.model.parameters():
        assert torch.isfinite(p).all()
