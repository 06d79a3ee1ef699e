import os
import os.path as osp
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from mmseg_dfq.datasets import (
    LoadProstateSlice,
    ProstateDGDataset,
    VolumeCache,
)
from mmseg_dfq.testing.synthetic import PROSTATE_SITES

from ..helpers import count_calls, load_base_config


def _volume(path):
    return np.asanyarray(nib.load(path).dataobj)


def _num_slices(root, sites):
    total = 0
    for site in sites:
        for f in os.listdir(osp.join(root, site)):
            if f.endswith('.nii.gz') and '_segmentation' not in f:
                total += nib.load(osp.join(root, site, f)).shape[2]
    return total


def test_slices_and_metas(prostate_root):
    ds = ProstateDGDataset(
        data_root=prostate_root, domains=[2, 3, 4, 5, 6], unseen_domains=[]
    )
    assert ds.domains == list(PROSTATE_SITES[1:])
    assert len(ds) == _num_slices(prostate_root, PROSTATE_SITES[1:])
    info = ds.get_data_info(0)
    assert info['domain'] == 'BMC' and info['domain_idx'] == 2
    assert info['seen'] is True
    assert info['case_id'] == 'BMC/Case00'
    assert info['slice_index'] == 0
    header = nib.load(info['img_path']).header
    assert info['num_slices'] == header.get_data_shape()[2]
    np.testing.assert_allclose(info['spacing'], header.get_zooms())
    np.testing.assert_allclose(
        info['affine'], nib.load(info['img_path']).affine
    )
    assert ds.metainfo['classes'] == ('background', 'prostate')

    target = ProstateDGDataset(
        data_root=prostate_root, domains=['RUNMC'], unseen_domains=['RUNMC']
    )
    assert not any(target.get_data_info(i)['seen'] for i in range(len(target)))


def test_case_split_is_deterministic_and_disjoint(prostate_root):
    def cases(split):
        ds = ProstateDGDataset(
            data_root=prostate_root, domains=[1, 2], split=split
        )
        return {ds.get_data_info(i)['case_id'] for i in range(len(ds))}

    train, test, every = cases('train'), cases('test'), cases('all')
    assert train and test and not train & test
    assert train | test == every
    assert len(test) == 2  # one of the three cases of each site
    assert cases('test') == test


def test_2p5d_channels_match_reference(prostate_root):
    ds = ProstateDGDataset(data_root=prostate_root, domains=['HK'])
    loader = LoadProstateSlice()
    checked_zone = False
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        if info['case_id'] not in ('HK/Case00', 'HK/Case01'):
            continue
        vol = _volume(info['img_path']).astype(np.float64)
        ref = 2 * (vol - vol.min()) / (vol.max() - vol.min()) - 1
        seg = _volume(info['seg_map_path'])
        k, n = info['slice_index'], info['num_slices']
        info['volume_cache'] = ds.volume_cache
        out = loader(info)
        assert out['img'].dtype == np.float32
        assert out['img'].shape == vol.shape[:2] + (3,)
        for c, j in enumerate((max(k - 1, 0), k, min(k + 1, n - 1))):
            np.testing.assert_allclose(
                out['img'][..., c], ref[:, :, j], atol=1e-5
            )
        if k == 0:
            np.testing.assert_array_equal(
                out['img'][..., 0], out['img'][..., 1]
            )
        np.testing.assert_array_equal(out['gt_seg_map'], seg[:, :, k] > 0)
        assert out['gt_seg_map'].dtype == np.uint8
        checked_zone |= bool((seg[:, :, k] == 2).any())
    assert checked_zone, 'no slice with label 2 was checked'


def test_config_pipelines_pack_metas(prostate_root):
    cfg = load_base_config('prostate_dg')
    for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
        assert pipeline[-1] == dict(type='PackDomainSegInputs')
    ds = ProstateDGDataset(
        data_root=prostate_root,
        domains=cfg.train_dataloader.dataset.domains,
        pipeline=cfg.train_pipeline,
    )
    out = ds[5]
    assert out['inputs'].shape == (3, 64, 64)
    assert out['inputs'].dtype == torch.float32
    assert -1 <= out['inputs'].min() and out['inputs'].max() <= 1
    meta = out['data_samples'].metainfo
    info = ds.get_data_info(5)
    for key in (
        'domain',
        'domain_idx',
        'seen',
        'case_id',
        'slice_index',
        'num_slices',
        'spacing',
    ):
        assert meta[key] == info[key], key
    assert set(out['data_samples'].gt_sem_seg.data.unique().tolist()) <= {0, 1}
    assert 'volume_cache' not in meta

    test_ds = ProstateDGDataset(
        data_root=prostate_root,
        domains=cfg.val_dataloader.dataset.domains,
        unseen_domains=cfg.val_dataloader.dataset.unseen_domains,
        pipeline=cfg.test_pipeline,
    )
    out = test_ds[0]
    assert out['data_samples'].metainfo['seen'] is False
    assert out['data_samples'].gt_sem_seg.data.shape == (1, 64, 64)


def test_each_volume_decoded_once(prostate_root, monkeypatch):
    ds = ProstateDGDataset(
        data_root=prostate_root,
        domains=[1, 2],
        pipeline=[dict(type='LoadProstateSlice')],
    )
    calls = count_calls(monkeypatch, nib, 'load')
    order = np.random.default_rng(0).permutation(len(ds))
    for i in order:
        ds[int(i)]
    # 6 volumes: image + segmentation each loaded exactly once.
    assert len(calls) == 12 and len(set(calls)) == 12
    assert ds.volume_cache.num_decodes == 6


def test_construction_reads_headers_only(prostate_root, monkeypatch):
    decoded = []
    real = nib.arrayproxy.ArrayProxy.__array__

    def spy(self, *args, **kwargs):
        decoded.append(self.file_like)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, '__array__', spy)
    ds = ProstateDGDataset(data_root=prostate_root)
    assert len(ds) > 0 and decoded == []


def test_cache_respects_byte_budget(prostate_root):
    ds = ProstateDGDataset(data_root=prostate_root, domains=['RUNMC'])
    shape = nib.load(ds.get_data_info(0)['img_path']).shape
    vol_bytes = int(np.prod(shape)) * 5  # float32 image + uint8 labels
    cache = VolumeCache(max_bytes=int(vol_bytes * 1.5))
    loader = LoadProstateSlice()
    for _sweep in range(2):
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            info['volume_cache'] = cache
            loader(info)
            assert cache.nbytes <= cache.max_bytes
            assert len(cache) == 1
    # In slice order each volume is decoded once a sweep.
    assert cache.num_decodes == 2 * 3

    nothing = VolumeCache(max_bytes=0)
    info = ds.get_data_info(0)
    info['volume_cache'] = nothing
    loader(info)
    assert len(nothing) == 0 and nothing.nbytes == 0


def _one_case(tmp_path, img, seg, site='RUNMC'):
    folder = tmp_path / site
    folder.mkdir(parents=True, exist_ok=True)
    img_path = str(folder / 'Case00.nii.gz')
    seg_path = str(folder / 'Case00_segmentation.nii.gz')
    nib.save(nib.Nifti1Image(img, np.eye(4)), img_path)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), seg_path)
    return img_path, seg_path


def _load(img_path, seg_path, k=0):
    return LoadProstateSlice()(
        dict(
            img_path=img_path,
            seg_map_path=seg_path,
            slice_index=k,
            volume_cache=VolumeCache(),
        )
    )


def test_bad_volumes_name_the_file(tmp_path):
    img = np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3)
    seg = np.zeros((4, 4, 3), np.uint8)

    img_path, seg_path = _one_case(tmp_path / 'a', img, seg[:, :, :2])
    with pytest.raises(ValueError, match='differs from image shape') as e:
        ProstateDGDataset(data_root=str(tmp_path / 'a'), domains=[1])
    assert seg_path in str(e.value)
    with pytest.raises(ValueError, match='differs from image shape') as e:
        _load(img_path, seg_path)
    assert seg_path in str(e.value)

    bad = seg.copy()
    bad[0, 0, 0] = 3
    img_path, seg_path = _one_case(tmp_path / 'b', img, bad)
    with pytest.raises(ValueError, match=r'outside \{0, 1, 2\}') as e:
        _load(img_path, seg_path)
    assert seg_path in str(e.value)

    img_path, seg_path = _one_case(
        tmp_path / 'c', img[..., None].repeat(2, 3), seg[..., None]
    )
    with pytest.raises(ValueError, match='3D volume') as e:
        ProstateDGDataset(data_root=str(tmp_path / 'c'), domains=[1])
    assert img_path in str(e.value)
    with pytest.raises(ValueError, match='3D volume') as e:
        _load(img_path, seg_path)
    assert img_path in str(e.value)

    img_path, seg_path = _one_case(tmp_path / 'd', img, seg)
    with open(img_path, 'wb') as f:
        f.write(b'not a nifti file at all')
    with pytest.raises(ValueError) as e:
        ProstateDGDataset(data_root=str(tmp_path / 'd'), domains=[1])
    assert img_path in str(e.value)
    with pytest.raises(ValueError, match='corrupt') as e:
        _load(img_path, seg_path)
    assert img_path in str(e.value)


def test_layout_errors_and_dir_override(prostate_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='not a folder'):
        ProstateDGDataset(data_root=str(tmp_path / 'absent'))
    root = str(tmp_path / 'copy')
    shutil.copytree(prostate_root, root)
    os.rename(osp.join(root, 'I2CVB'), osp.join(root, 'HCRUDB'))
    with pytest.raises(FileNotFoundError, match='I2CVB.*domain_dirs'):
        ProstateDGDataset(data_root=root, domains=[3])
    ds = ProstateDGDataset(
        data_root=root, domains=[3], domain_dirs={'I2CVB': 'HCRUDB'}
    )
    assert ds.get_data_info(0)['domain'] == 'I2CVB'
    assert 'HCRUDB' in ds.get_data_info(0)['img_path']

    seg = osp.join(root, 'UCL', 'Case01_segmentation.nii.gz')
    os.remove(seg)
    with pytest.raises(FileNotFoundError, match='no segmentation') as e:
        ProstateDGDataset(data_root=root, domains=['UCL'])
    assert 'Case01.nii.gz' in str(e.value)

    # Uncompressed .nii is read as well.
    hk = osp.join(root, 'HK')
    for stem in ('Case00', 'Case00_segmentation'):
        img = nib.load(osp.join(hk, stem + '.nii.gz'))
        nib.save(img, osp.join(hk, stem + '.nii'))
        os.remove(osp.join(hk, stem + '.nii.gz'))
    ds = ProstateDGDataset(data_root=root, domains=['HK'])
    assert ds.get_data_info(0)['img_path'].endswith('Case00.nii')
    ds.pipeline.transforms.append(LoadProstateSlice())
    assert ds[0]['img'].shape[2] == 3
