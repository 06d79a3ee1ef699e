"""PackDomainSegInputs: the domain metas always packed, spacing enforced."""

import numpy as np
import pytest
from mmseg.registry import TRANSFORMS

from mmseg_dfq.datasets import DFQ_META_KEYS, PackDomainSegInputs
from mmseg_dfq.datasets.transforms import DOMAIN_META_KEYS, PACK_META_KEYS


def sample(**keys):
    out = dict(
        img=np.zeros((4, 5, 3), np.float32),
        gt_seg_map=np.zeros((4, 5), np.uint8),
        img_path='a/x.png',
        ori_shape=(4, 5),
        img_shape=(4, 5),
        domain='D',
        domain_idx=1,
        seen=True,
        case_id='x',
    )
    out.update(keys)
    return out


def test_keys_are_mmseg_defaults_plus_the_domain_keys():
    pack = TRANSFORMS.build(dict(type='PackDomainSegInputs'))
    assert isinstance(pack, PackDomainSegInputs)
    assert tuple(pack.meta_keys) == PACK_META_KEYS == DFQ_META_KEYS
    for key in ('img_path', 'ori_shape', 'flip', 'reduce_zero_label'):
        assert key in pack.meta_keys
    assert set(DOMAIN_META_KEYS) <= set(pack.meta_keys)
    extra = PackDomainSegInputs(extra_meta_keys=('affine', 'domain'))
    assert tuple(extra.meta_keys) == PACK_META_KEYS + ('affine',)


def test_image_sample_packs_domain_metas_without_spacing():
    out = PackDomainSegInputs()(sample())
    meta = out['data_samples'].metainfo
    assert meta['domain'] == 'D' and meta['case_id'] == 'x'
    assert 'spacing' not in meta
    assert out['inputs'].shape == (3, 4, 5)


def test_volume_sample_keeps_spacing():
    out = PackDomainSegInputs()(
        sample(
            img_path='s/Case00.nii.gz',
            slice_index=2,
            num_slices=5,
            spacing=(0.5, 0.5, 3.0),
        )
    )
    meta = out['data_samples'].metainfo
    assert meta['spacing'] == (0.5, 0.5, 3.0)
    assert meta['slice_index'] == 2 and meta['num_slices'] == 5


@pytest.mark.parametrize(
    'keys',
    [
        dict(img_path='s/Case00.nii.gz', slice_index=2, num_slices=5),
        dict(img_path='s/Case00.nii', spacing=None),
        dict(img_path=None, slice_index=0, num_slices=5),
    ],
)
def test_volume_sample_without_spacing_is_refused(keys):
    with pytest.raises(ValueError, match='without a spacing') as err:
        PackDomainSegInputs()(sample(**keys))
    path = keys['img_path']
    assert (path or '<array>') in str(err.value)
    assert 'voxels' in str(err.value)
