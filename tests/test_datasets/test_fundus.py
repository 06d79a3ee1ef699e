import os
import os.path as osp
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from mmcv.transforms import Compose

from mmseg_dfq.datasets import (
    FundusDGDataset,
    LoadFundusAnnotations,
    LoadFundusImageFromFile,
    decode_fundus_mask,
)

from ..helpers import load_base_config


def _copy_root(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_loads_domains_and_metas(fundus_root):
    ds = FundusDGDataset(
        data_root=fundus_root, domains=[2, 'Domain3', 4], split='train'
    )
    assert len(ds) == 18
    assert ds.domains == ['Domain2', 'Domain3', 'Domain4']
    info = ds.get_data_info(0)
    assert info['domain'] == 'Domain2' and info['domain_idx'] == 2
    assert info['seen'] is True
    assert info['case_id'] == 'synth_d2_train_000'
    assert {ds.get_data_info(i)['domain_idx'] for i in range(18)} == {2, 3, 4}

    target = FundusDGDataset(
        data_root=fundus_root,
        domains=[1],
        unseen_domains=[1],
        split=('train', 'test'),
    )
    assert len(target) == 10
    assert all(not target.get_data_info(i)['seen'] for i in range(10))
    assert target.metainfo['classes'] == (
        'background',
        'optic_disc_rim',
        'optic_cup',
    )


def test_config_pipelines_pack_metas(fundus_root):
    cfg = load_base_config('fundus_dg')
    for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
        assert pipeline[-1] == dict(type='PackDomainSegInputs')
    ds = FundusDGDataset(
        data_root=fundus_root,
        domains=cfg.train_dataloader.dataset.domains,
        split='train',
        pipeline=cfg.train_pipeline,
    )
    for i in (0, len(ds) - 1):
        out = ds[i]
        assert out['inputs'].shape == (3, 256, 256)
        assert out['inputs'].dtype == torch.uint8
        sample = out['data_samples']
        labels = set(sample.gt_sem_seg.data.unique().tolist())
        assert labels <= {0, 1, 2} and 1 in labels
        info = ds.get_data_info(i)
        for key in ('domain', 'domain_idx', 'seen', 'case_id'):
            assert sample.metainfo[key] == info[key]
        assert sample.metainfo['ori_shape'] == (96, 96)

    test_pipeline = Compose(cfg.test_pipeline)
    target = FundusDGDataset(
        data_root=fundus_root, domains=[1], unseen_domains=[1], split='test'
    )
    out = test_pipeline(target.get_data_info(0))
    assert out['inputs'].shape == (3, 256, 256)
    # Annotations are loaded after Resize: the metric sees original masks.
    assert out['data_samples'].gt_sem_seg.data.shape == (1, 96, 96)
    assert out['data_samples'].metainfo['seen'] is False
    # The decoded labels match the mask file under the stated thresholds.
    grey = cv2.imread(target.get_data_info(0)['seg_map_path'], 0)
    expected = np.where(grey > 200, 0, np.where(grey > 50, 1, 2))
    np.testing.assert_array_equal(
        out['data_samples'].gt_sem_seg.data[0].numpy(), expected
    )


def _load_mask(tmp_path, mask, img_shape=None):
    path = str(tmp_path / 'mask.png')
    assert cv2.imwrite(path, mask)
    results = dict(seg_map_path=path, seg_fields=[])
    if img_shape is not None:
        results['ori_shape'] = img_shape
        results['img_path'] = 'img.png'
    return LoadFundusAnnotations()(results), path


def test_mask_thresholds(tmp_path):
    grey = np.array(
        [[255, 128, 0, 201, 200, 51, 50, 230, 180, 30, 90, 12]], np.uint8
    )
    # Hand-written from the rule >200 bg, 51..200 rim, <=50 cup.
    expected = np.array([[0, 1, 2, 0, 1, 1, 2, 0, 1, 2, 1, 2]])
    # 6 of these 12 levels are far from 0/128/255: decoded only with a
    # warning, and only because the limit is lifted here.
    with pytest.warns(UserWarning, match='6 pixels'):
        labels = decode_fundus_mask(grey, max_off_fraction=1.0)
    np.testing.assert_array_equal(labels, expected)
    # The loader reads the same levels, diluted below 1% of the mask.
    big = np.full((30, 40), 128, np.uint8)
    big[0, :12] = grey[0]
    with pytest.warns(UserWarning, match='mask.png'):
        out, _ = _load_mask(tmp_path, big)
    np.testing.assert_array_equal(out['gt_seg_map'][:1, :12], expected)
    assert out['gt_seg_map'].dtype == np.uint8
    assert out['seg_fields'] == ['gt_seg_map']
    grey = np.array([[255, 128, 0, 230, 140, 30, 12, 223, 160, 32]], np.uint8)
    expected = np.array([[0, 1, 2, 0, 1, 2, 2, 0, 1, 2]])

    # A grey mask stored as RGB (equal channels) or as 16 bit within 0..255
    # decodes the same.
    out, _ = _load_mask(tmp_path, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(out['gt_seg_map'], expected)
    out, _ = _load_mask(tmp_path, grey.astype(np.uint16))
    np.testing.assert_array_equal(out['gt_seg_map'], expected)


def test_noisy_mask_decodes_to_clean_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 40))
    levels = np.array([255, 128, 0])[labels]
    noisy = np.clip(levels + rng.integers(-32, 33, labels.shape), 0, 255)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # noise within 32 is not reported
        out, _ = _load_mask(tmp_path, noisy.astype(np.uint8))
    np.testing.assert_array_equal(out['gt_seg_map'], labels)


def test_masks_off_the_encoding_warn_or_raise(tmp_path):
    mask = np.full((50, 50), 255, np.uint8)
    mask[10:30, 10:30] = 128
    mask[15:25, 15:25] = 0
    # A few pixels of a foreign level: decoded, with a warning that names
    # the file, the fraction and the values.
    mask[0, :5] = 77
    mask[1, :2] = 190
    path = str(tmp_path / 'mask.png')
    with pytest.warns(UserWarning) as record:
        out, _ = _load_mask(tmp_path, mask)
    (message,) = [str(w.message) for w in record if 'fundus' in str(w.message)]
    assert path in message and '0.28%' in message
    assert '77 (5 px)' in message and '190 (2 px)' in message
    assert out['gt_seg_map'][0, 0] == 1  # 77 falls in the rim band
    # A region of a foreign level (here 2.4% of the mask) is refused.
    mask[40:46, 40:50] = 77
    with pytest.raises(ValueError, match=r'2\.6.%.*77 \(65 px\)') as e:
        _load_mask(tmp_path, mask)
    assert path in str(e.value) and 'more than 1.00%' in str(e.value)
    with pytest.raises(ValueError, match='integer'):
        decode_fundus_mask(mask.astype(np.float32))


def test_bad_masks_name_the_file(tmp_path):
    grey = np.full((8, 8), 255, np.uint8)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 2] = 255
    with pytest.raises(ValueError, match='not single-channel grey') as e:
        _load_mask(tmp_path, rgb)
    assert str(tmp_path / 'mask.png') in str(e.value)

    with pytest.raises(ValueError, match='16-bit') as e:
        _load_mask(tmp_path, np.full((8, 8), 1000, np.uint16))
    assert str(tmp_path / 'mask.png') in str(e.value)

    with pytest.raises(ValueError, match='differs from its image') as e:
        _load_mask(tmp_path, grey, img_shape=(9, 8))
    assert str(tmp_path / 'mask.png') in str(e.value)

    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
    with pytest.raises(ValueError, match='cannot decode') as e:
        LoadFundusAnnotations()(dict(seg_map_path=str(corrupt)))
    assert str(corrupt) in str(e.value)

    missing = str(tmp_path / 'missing.png')
    with pytest.raises(FileNotFoundError, match='missing.png'):
        LoadFundusAnnotations()(dict(seg_map_path=missing))


def test_bad_images_name_the_file(tmp_path):
    corrupt = tmp_path / 'img.png'
    corrupt.write_bytes(b'garbage')
    with pytest.raises(ValueError, match='cannot decode') as e:
        LoadFundusImageFromFile()(dict(img_path=str(corrupt)))
    assert str(corrupt) in str(e.value)
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match='empty') as e:
        LoadFundusImageFromFile()(dict(img_path=str(empty)))
    assert str(empty) in str(e.value)
    with pytest.raises(FileNotFoundError, match='nope.png'):
        LoadFundusImageFromFile()(dict(img_path=str(tmp_path / 'nope.png')))


def test_construction_errors(fundus_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='not a folder'):
        FundusDGDataset(data_root=str(tmp_path / 'absent'))
    with pytest.raises(ValueError, match='outside 1..4'):
        FundusDGDataset(data_root=fundus_root, domains=[5])
    with pytest.raises(ValueError, match='split'):
        FundusDGDataset(data_root=fundus_root, split='val')

    root = _copy_root(fundus_root, tmp_path / 'copy')
    os.remove(osp.join(root, 'Domain3_test.list'))
    with pytest.raises(FileNotFoundError) as e:
        FundusDGDataset(data_root=root, domains=[3], split='test')
    assert 'Domain3_test.list' in str(e.value)

    mask = osp.join(root, 'Domain2/train/ROIs/mask/synth_d2_train_004.png')
    os.remove(mask)
    with pytest.raises(FileNotFoundError) as e:
        FundusDGDataset(data_root=root, domains=[2])
    assert mask in str(e.value) and 'Domain2_train.list:5' in str(e.value)

    with open(osp.join(root, 'Domain1_train.list'), 'a') as f:
        f.write('only_one_column.png\n')
    with pytest.raises(ValueError, match='Domain1_train.list:7'):
        FundusDGDataset(data_root=root, domains=[1])


def test_same_stem_twice_in_a_domain_gets_distinct_case_ids(
    fundus_root, tmp_path
):
    root = _copy_root(fundus_root, tmp_path / 'copy')
    list_file = osp.join(root, 'Domain1_train.list')
    with open(list_file) as f:
        img, mask = f.readline().split()
    # The same stem under another folder of the same domain.
    for rel in (img, mask):
        dst = osp.join(root, 'Domain1', 'extra', rel.split('/', 2)[2])
        os.makedirs(osp.dirname(dst), exist_ok=True)
        shutil.copy(osp.join(root, rel), dst)
    extra = ['Domain1/extra/' + rel.split('/', 2)[2] for rel in (img, mask)]
    with open(list_file, 'a') as f:
        f.write(' '.join(extra) + '\n')
    ds = FundusDGDataset(data_root=root, domains=[1, 2])
    ids = [ds.get_data_info(i)['case_id'] for i in range(len(ds))]
    stem = osp.splitext(osp.basename(img))[0]
    assert stem not in ids
    assert osp.splitext(img)[0] in ids and osp.splitext(extra[0])[0] in ids
    # Within each domain every case is one id; other images keep the stem.
    for domain in ('Domain1', 'Domain2'):
        infos = [
            ds.get_data_info(i)
            for i in range(len(ds))
            if ds.get_data_info(i)['domain'] == domain
        ]
        assert len({i['case_id'] for i in infos}) == len(infos)
    assert (
        osp.splitext(osp.basename(ds.get_data_info(1)['img_path']))[0]
        == (ds.get_data_info(1)['case_id'])
    )
