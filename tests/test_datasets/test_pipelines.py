"""The fundus pipelines are built once per crop size and equal to the
pipelines the configs spelled out before (behaviour kept)."""

import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmseg.registry import TRANSFORMS

from mmseg_dfq.datasets.pipelines import (
    fundus_test_pipeline,
    fundus_train_pipeline,
)
from mmseg_dfq.datasets.transforms import (
    LoadFundusImageFromFile,
    LoadImageOrSliceFromFile,
)

REPO = osp.join(osp.dirname(__file__), '..', '..')


def literal_train(crop, cache=False):
    """The training pipeline as the configs wrote it out (Pack swapped)."""
    load = [
        dict(type='LoadFundusImageFromFile'),
        dict(type='LoadFundusAnnotations'),
        dict(type='Resize', scale=crop, keep_ratio=False),
    ]
    if cache:
        load = [dict(type='MemoryCache', transforms=load)]
    return load + [
        dict(
            type='RandomApply',
            transforms=[
                dict(
                    type='RandomAnisotropicResize',
                    scale=crop,
                    ratio_range=(1.0, 1.5),
                )
            ],
            prob=0.5,
        ),
        dict(type='RandomCrop', crop_size=crop),
        dict(type='PackDomainSegInputs'),
    ]


def literal_test(crop, loader=None):
    return [
        loader or dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
        dict(type='Resize', scale=crop, keep_ratio=False),
        dict(type='LoadFundusAnnotations'),
        dict(type='PackDomainSegInputs'),
    ]


def built(pipeline):
    """The transforms as built (types and their repr, which holds sizes)."""
    return [repr(TRANSFORMS.build(dict(t))) for t in pipeline]


def as_plain(x):
    if isinstance(x, dict):
        return {k: as_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [as_plain(v) for v in x]
    return x


# config -> (crop, cached train loading, test loader of the old config)
CONFIGS = {
    'configs/_base_/datasets/fundus_dg.py': ((256, 256), False, None),
    'configs/dfq/dfq_mit-tiny_demo_fundus.py': ((64, 64), False, None),
    'configs/dfq/dfq_mit-b2_fundus_d1_fast.py': ((256, 256), True, None),
    'configs/dfq/dfq_vit-s14-dinov2_fundus_d1-252.py': (
        (252, 252),
        False,
        dict(type='LoadFundusImageFromFile'),
    ),
}


@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_config_pipelines_equal_the_spelled_out_ones(config):
    crop, cache, old_loader = CONFIGS[config]
    cfg = Config.fromfile(osp.join(REPO, config))
    train = cfg.train_dataloader.dataset.pipeline
    assert as_plain(train) == as_plain(literal_train(crop, cache))
    if not cache:
        assert built(train) == built(literal_train(crop))
    for loader in ('val_dataloader', 'test_dataloader'):
        test = cfg[loader].dataset.pipeline
        assert as_plain(test) == as_plain(literal_test(crop))
        assert built(test[1:]) == built(literal_test(crop)[1:])
    if old_loader is not None:
        # The 252 px config used the image loader that DFQ's
        # LoadImageFromFile extends; on image files the two are one loader.
        assert issubclass(LoadImageOrSliceFromFile, LoadFundusImageFromFile)
        assert LoadImageOrSliceFromFile.__mro__[1] is LoadFundusImageFromFile


def test_builders_refuse_a_bad_crop():
    with pytest.raises(ValueError, match='crop_size'):
        fundus_train_pipeline((256,))
    with pytest.raises(ValueError, match='crop_size'):
        fundus_test_pipeline((0, 256))
    assert fundus_train_pipeline([32, 48])[2]['scale'] == (32, 48)


def test_flip_tta_pipeline_packs_both_views_and_refuses_unpacked():
    from mmseg_dfq.datasets.pipelines import flip_tta_pipeline

    test = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(8, 8)),
        dict(type='PackDomainSegInputs'),
    ]
    tta = flip_tta_pipeline(test)
    assert tta[:2] == test[:2]
    aug = tta[2]
    assert aug['type'] == 'TestTimeAug'
    flips, packs = aug['transforms']
    assert [f['prob'] for f in flips] == [0.0, 1.0]
    assert packs == [test[-1]]
    with pytest.raises(ValueError, match='packing step'):
        flip_tta_pipeline(test[:2])


def test_pillow_backend_resizes_as_pil(tmp_path):
    # The authors resize with PIL (bilinear images, nearest masks), which
    # antialiases when it shrinks; cv2 does not.
    from mmcv.transforms import Compose
    from PIL import Image

    from mmseg_dfq.testing.synthetic import make_fundus

    make_fundus(str(tmp_path), seed=0, cases=2, size=96)
    image = sorted((tmp_path / 'Domain1').rglob('image/*.png'))[0]
    pipeline = fundus_test_pipeline((40, 40), resize_backend='pillow')
    assert [t.get('backend') for t in pipeline if t['type'] == 'Resize'] == [
        'pillow'
    ]
    out = Compose([TRANSFORMS.build(dict(t)) for t in pipeline[:2]])(
        dict(img_path=str(image))
    )
    # mmcv loads BGR; PIL's resize of the RGB file, flipped to BGR.
    rgb = Image.open(image).convert('RGB').resize((40, 40), Image.BILINEAR)
    expected = np.asarray(rgb)[..., ::-1]
    np.testing.assert_array_equal(out['img'], expected)
    cv2_out = Compose(
        [TRANSFORMS.build(dict(t)) for t in fundus_test_pipeline((40, 40))[:2]]
    )(dict(img_path=str(image)))
    assert not np.array_equal(cv2_out['img'], expected)
    train = fundus_train_pipeline((40, 40), resize_backend='pillow')
    assert train[2]['backend'] == 'pillow'
    assert train[3]['transforms'][0]['backend'] == 'pillow'
    with pytest.raises(ValueError, match='resize_backend'):
        fundus_test_pipeline((40, 40), resize_backend='PIL')
