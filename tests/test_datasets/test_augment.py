"""The authors' fundus augmentation: independent x / y scaling, no flip."""

import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config

import mmseg_dfq  # noqa: F401  (registers the transforms)
from mmseg_dfq.datasets import RandomAnisotropicResize

REPO = osp.join(osp.dirname(__file__), '..', '..')


def sample(h=40, w=60):
    img = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    seg = (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)
    return dict(img=img, gt_seg_map=seg, seg_fields=['gt_seg_map'])


def test_x_and_y_ratios_are_drawn_independently():
    np.random.seed(0)
    resize = RandomAnisotropicResize(scale=(60, 40), ratio_range=(1.0, 1.5))
    rx, ry = [], []
    for _ in range(200):
        out = resize(sample())
        h, w = out['img'].shape[:2]
        assert out['gt_seg_map'].shape == (h, w)
        assert 60 <= w <= 90 and 40 <= h <= 60
        rx.append(w / 60)
        ry.append(h / 40)
    rx, ry = np.array(rx), np.array(ry)
    # Both cover U(1, 1.5) and are uncorrelated (one ratio would give 1).
    for r in (rx, ry):
        assert r.min() < 1.05 and r.max() > 1.45
        assert abs(r.mean() - 1.25) < 0.05
    assert abs(np.corrcoef(rx, ry)[0, 1]) < 0.25
    # Labels stay labels (nearest interpolation).
    assert set(np.unique(out['gt_seg_map'])) <= {0, 1, 2}


@pytest.mark.parametrize(
    'kwargs',
    [dict(scale=(64,), ratio_range=(1, 1.5)), dict(ratio_range=(1.5, 1.0))],
)
def test_bad_arguments(kwargs):
    kwargs.setdefault('scale', (64, 64))
    with pytest.raises(ValueError, match='RandomAnisotropicResize'):
        RandomAnisotropicResize(**kwargs)


@pytest.mark.parametrize(
    'base', ['fundus_dg.py', 'prostate_dg.py'], ids=['fundus', 'prostate']
)
def test_default_train_pipelines_are_the_authors(base):
    cfg = Config.fromfile(
        osp.join(REPO, 'configs', '_base_', 'datasets', base)
    )
    types = [t['type'] for t in cfg.train_pipeline]
    assert 'RandomFlip' not in types
    if base.startswith('prostate'):
        # No augmentation at all.
        assert not [t for t in types if t.startswith('Random')]
        return
    apply = next(t for t in cfg.train_pipeline if t['type'] == 'RandomApply')
    assert apply['prob'] == 0.5
    (inner,) = apply['transforms']
    assert inner['type'] == 'RandomAnisotropicResize'
    assert tuple(inner['ratio_range']) == (1.0, 1.5)
    assert types.index('RandomCrop') > types.index('RandomApply')
