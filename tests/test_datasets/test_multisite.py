"""MultiSiteDataset: a config's own multi-site data, 2D images or NIfTI."""

import os.path as osp

import cv2
import nibabel as nib
import numpy as np
import pytest

from mmseg_dfq.datasets import MultiSiteDataset
from mmseg_dfq.testing.synthetic import MULTISITE_SITES, make_multisite

from ..helpers import load_base_config


@pytest.fixture(scope='module')
def image_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('multisite'))
    make_multisite(root, seed=0, cases=4)
    return root


@pytest.fixture(scope='module')
def nifti_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('multisite_nifti'))
    make_multisite(root, seed=0, file_kind='nifti', cases=2, size=32)
    return root


def dataset_cfg(name, root, loader):
    cfg = load_base_config(name)
    ds = dict(cfg[loader].dataset)
    ds.pop('type')
    ds['data_root'] = root
    return ds


def test_base_config_reads_the_example(image_root):
    cfg = dataset_cfg('multisite_2d', image_root, 'test_dataloader')
    ds = MultiSiteDataset(**cfg)
    assert ds.domains == list(MULTISITE_SITES)
    assert len(ds) == 12
    meta = ds.metainfo
    assert meta['structures'] == dict(Disc=(1,))
    assert meta['domains'] == MULTISITE_SITES
    info = ds.get_data_info(0)
    assert info['domain'] == 'HospitalA' and info['case_id'] == 'case00'
    assert info['seen'] is False and info['mask_values'] == {0: 0, 255: 1}
    out = ds[0]
    labels = set(out['data_samples'].gt_sem_seg.data.unique().tolist())
    assert labels == {0, 1}
    assert out['data_samples'].metainfo['domain'] == 'HospitalA'
    assert out['inputs'].shape == (3, 64, 64)
    train = MultiSiteDataset(
        **dataset_cfg('multisite_2d', image_root, 'train_dataloader')
    )
    assert train.domains == ['HospitalB', 'HospitalC'] and len(train) == 8


def test_mask_value_outside_the_map_names_the_file(image_root, tmp_path):
    cfg = dataset_cfg('multisite_2d', image_root, 'test_dataloader')
    ds = MultiSiteDataset(**{**cfg, 'mask_values': {0: 0, 128: 1}})
    path = ds.get_data_info(0)['seg_map_path']
    with pytest.raises(ValueError, match=r'outside \{0, 128\}') as err:
        ds[0]
    assert path in str(err.value) and '255' in str(err.value)
    # The default map is the identity over the classes: 255 is no class.
    ds = MultiSiteDataset(**{**cfg, 'mask_values': None})
    with pytest.raises(ValueError, match=r'outside \{0, 1\}'):
        ds[0]
    with pytest.raises(ValueError, match='maps to class 2'):
        MultiSiteDataset(**{**cfg, 'mask_values': {0: 0, 255: 2}})


def test_layout_errors(image_root, tmp_path):
    cfg = dataset_cfg('multisite_2d', image_root, 'test_dataloader')
    with pytest.raises(FileNotFoundError, match='not a folder'):
        MultiSiteDataset(**{**cfg, 'data_root': str(tmp_path / 'nope')})
    with pytest.raises(ValueError, match='lacks'):
        MultiSiteDataset(
            **{**cfg, 'metainfo': dict(cfg['metainfo'], structures=None)}
        )
    with pytest.raises(ValueError, match="eval_mode must be '2d'"):
        MultiSiteDataset(
            **{
                **cfg,
                'metainfo': dict(
                    cfg['metainfo'],
                    eval_mode='3d',
                    post_process=dict(
                        largest_cc=True, fill_holes=False, connectivity=1
                    ),
                ),
            }
        )
    # An image without its mask is named.
    root = tmp_path / 'root'
    for site in MULTISITE_SITES:
        (root / site / 'images').mkdir(parents=True)
        (root / site / 'masks').mkdir()
    img = root / 'HospitalA' / 'images' / 'lonely.png'
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match='lonely.png') as err:
        MultiSiteDataset(**{**cfg, 'data_root': str(root), 'domains': [1]})
    assert 'no segmentation / mask' in str(err.value)


def test_case_split_partitions_each_domain(image_root):
    cfg = dataset_cfg('multisite_2d', image_root, 'test_dataloader')
    cfg.pop('split')
    parts = {
        s: MultiSiteDataset(**cfg, split=s, test_fraction=0.25)
        for s in ('all', 'train', 'test')
    }
    ids = {
        s: {(i['domain'], i['case_id']) for i in ds.load_data_list()}
        for s, ds in parts.items()
    }
    assert ids['train'].isdisjoint(ids['test'])
    assert ids['train'] | ids['test'] == ids['all']
    assert len(ids['test']) == 3  # one of four cases per hospital
    other = MultiSiteDataset(
        **cfg, split='test', test_fraction=0.25, split_seed=3
    )
    assert len(other) == 3


def test_nifti_slices_keep_spacing_and_map_labels(nifti_root):
    cfg = dataset_cfg('multisite_nifti', nifti_root, 'test_dataloader')
    ds = MultiSiteDataset(**cfg)
    assert ds.metainfo['eval_mode'] == '3d'
    info = ds.get_data_info(0)
    img = nib.load(info['img_path'])
    assert info['case_id'] == 'HospitalA/case00'
    assert info['num_slices'] == img.shape[2]
    assert info['spacing'] == tuple(float(z) for z in img.header.get_zooms())
    # case01 holds label 2 (a zone), mapped to the prostate by mask_values.
    k = next(
        i
        for i in range(len(ds))
        if ds.get_data_info(i)['case_id'] == 'HospitalA/case01'
    )
    seg = np.asanyarray(nib.load(ds.get_data_info(k)['seg_map_path']).dataobj)
    assert 2 in np.unique(seg)
    for i in range(k, k + ds.get_data_info(k)['num_slices']):
        out = ds[i]
        meta = out['data_samples'].metainfo
        assert meta['spacing'] == ds.get_data_info(i)['spacing']
        assert set(out['data_samples'].gt_sem_seg.data.unique().tolist()) <= {
            0,
            1,
        }
    # Without the zone in the map the file is refused, by name.
    strict = MultiSiteDataset(**{**cfg, 'mask_values': {0: 0, 1: 1}})
    with pytest.raises(ValueError, match=r'outside \{0, 1\}') as err:
        strict[k]
    assert osp.basename(ds.get_data_info(k)['seg_map_path']) in str(err.value)
