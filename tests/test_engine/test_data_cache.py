"""MemoryCache: the deterministic prefix runs once, results are equal."""

import copy

import numpy as np
import pytest
from mmcv.transforms import BaseTransform, Compose
from mmseg.registry import TRANSFORMS

from mmseg_dfq.engine import MemoryCache
from mmseg_dfq.testing.synthetic import make_fundus

CALLS = []


@TRANSFORMS.register_module(force=True)
class _CountCalls(BaseTransform):
    def transform(self, results):
        CALLS.append(results['img_path'])
        return results


def fundus_samples(root):
    import glob
    import os.path as osp

    images = sorted(glob.glob(osp.join(root, 'Domain2/train/ROIs/image/*')))
    return [
        dict(
            img_path=p,
            seg_map_path=p.replace('/image/', '/mask/'),
            seg_fields=[],
            reduce_zero_label=False,
        )
        for p in images[:2]
    ]


def test_cached_prefix_matches_and_runs_once(tmp_path):
    root = str(tmp_path / 'fundus')
    make_fundus(root, seed=0, cases=4, size=48)
    prefix = [
        dict(type='_CountCalls'),
        dict(type='LoadFundusImageFromFile'),
        dict(type='LoadFundusAnnotations'),
        dict(type='Resize', scale=(32, 32), keep_ratio=False),
    ]
    plain = Compose(prefix[1:] + [dict(type='RandomFlip', prob=1.0)])
    cached = Compose(
        [
            dict(type='MemoryCache', transforms=prefix),
            dict(type='RandomFlip', prob=1.0),
        ]
    )
    samples = fundus_samples(root)
    CALLS.clear()
    for _ in range(3):
        for sample in samples:
            # Fresh dicts, as the dataset's get_data_info hands out.
            got = cached(copy.deepcopy(sample))
            ref = plain(copy.deepcopy(sample))
            np.testing.assert_array_equal(got['img'], ref['img'])
            np.testing.assert_array_equal(got['gt_seg_map'], ref['gt_seg_map'])
            assert got['img'].shape == (32, 32, 3)
    # Decoded once per sample, however many epochs.
    assert sorted(CALLS) == sorted(s['img_path'] for s in samples)
    # The cache holds its own arrays: in-place work downstream is harmless.
    cache = cached.transforms[0]
    out = cache(copy.deepcopy(samples[0]))
    out['img'][:] = 0
    again = cache(copy.deepcopy(samples[0]))
    assert again['img'].any()


def test_bad_arguments():
    with pytest.raises(ValueError, match='transforms is empty'):
        MemoryCache(transforms=[])
    cache = MemoryCache(transforms=[dict(type='_CountCalls')], keys=('x',))
    with pytest.raises(KeyError, match='none of the keys'):
        cache(dict(img_path='a.png'))
