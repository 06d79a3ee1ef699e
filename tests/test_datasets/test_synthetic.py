import glob
import os.path as osp
import subprocess
import sys
import time

import cv2
import nibabel as nib
import numpy as np

from mmseg_dfq.testing.synthetic import (
    PROSTATE_SITES,
    make_fundus,
    make_prostate,
)

REPO = osp.join(osp.dirname(__file__), '..', '..')


def _arrays(root, pattern, read):
    paths = sorted(glob.glob(osp.join(root, pattern), recursive=True))
    assert paths
    return {osp.relpath(p, root): read(p) for p in paths}


def _png(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def _nii(path):
    return np.asanyarray(nib.load(path).dataobj)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert a[key].tobytes() == b[key].tobytes(), key


def test_fundus_deterministic_and_seeded(tmp_path):
    make_fundus(str(tmp_path / 'a'), seed=3, cases=5, size=48)
    make_fundus(str(tmp_path / 'b'), seed=3, cases=5, size=48)
    make_fundus(str(tmp_path / 'c'), seed=4, cases=5, size=48)
    a = _arrays(str(tmp_path / 'a'), '**/*.png', _png)
    _assert_same(a, _arrays(str(tmp_path / 'b'), '**/*.png', _png))
    c = _arrays(str(tmp_path / 'c'), '**/*.png', _png)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)
    for name in ('Domain1_train.list', 'Domain4_test.list'):
        with open(tmp_path / 'a' / name) as f, open(
            tmp_path / 'b' / name
        ) as g:
            assert f.read() == g.read()


def test_prostate_deterministic_and_seeded(tmp_path):
    kw = dict(cases=2, size=32, slices=(5, 7))
    make_prostate(str(tmp_path / 'a'), seed=3, **kw)
    make_prostate(str(tmp_path / 'b'), seed=3, **kw)
    make_prostate(str(tmp_path / 'c'), seed=4, **kw)
    a = _arrays(str(tmp_path / 'a'), '*/*.nii.gz', _nii)
    _assert_same(a, _arrays(str(tmp_path / 'b'), '*/*.nii.gz', _nii))
    c = _arrays(str(tmp_path / 'c'), '*/*.nii.gz', _nii)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


def test_fundus_layout_and_anatomy(fundus_root):
    cdrs = []
    for k in range(1, 5):
        for split, n in (('train', 6), ('test', 4)):
            with open(osp.join(fundus_root, f'Domain{k}_{split}.list')) as f:
                lines = f.read().splitlines()
            assert len(lines) == n
            for line in lines:
                img_rel, mask_rel = line.split(' ')
                assert img_rel.startswith(f'Domain{k}/{split}/ROIs/image/')
                assert mask_rel.startswith(f'Domain{k}/{split}/ROIs/mask/')
                img = _png(osp.join(fundus_root, img_rel))
                mask = _png(osp.join(fundus_root, mask_rel))
                assert img.shape == (96, 96, 3) and img.dtype == np.uint8
                assert mask.shape == (96, 96) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 128, 255}
                cup = (mask == 0).sum()
                disc = (mask <= 128).sum()
                cdrs.append(np.sqrt(cup / disc))
    # Area-based cup-to-disc ratio, pixelised around the drawn 0.3..0.7.
    assert 0.25 < min(cdrs) and max(cdrs) < 0.75


def test_fundus_domains_differ_in_appearance(fundus_root):
    stats = []
    for k in range(1, 5):
        paths = glob.glob(osp.join(fundus_root, f'Domain{k}/*/ROIs/image/*'))
        pix = np.stack([_png(p)[..., ::-1] for p in paths]).astype(float)
        pix /= 255
        # Mean RGB and contrast of the domain.
        stats.append(np.r_[pix.mean(axis=(0, 1, 2)), pix.std()])
    stats = np.array(stats)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(stats[i] - stats[j]).max() > 0.03, (i, j)


def test_prostate_layout_and_domain_shift(prostate_root):
    spacings, scales = [], []
    with_zone = 0
    for site in PROSTATE_SITES:
        for i in range(3):
            img_nii = nib.load(
                osp.join(prostate_root, site, f'Case{i:02d}.nii.gz')
            )
            seg_nii = nib.load(
                osp.join(
                    prostate_root, site, f'Case{i:02d}_segmentation.nii.gz'
                )
            )
            img = np.asanyarray(img_nii.dataobj)
            seg = np.asanyarray(seg_nii.dataobj)
            assert img.shape == seg.shape and img.shape[:2] == (64, 64)
            assert 8 <= img.shape[2] <= 16
            assert set(np.unique(seg)) <= {0, 1, 2} and (seg > 0).any()
            with_zone += int((seg == 2).any())
            zooms = img_nii.header.get_zooms()
            np.testing.assert_allclose(
                np.abs(np.diag(img_nii.affine)[:3]), zooms, rtol=1e-6
            )
            np.testing.assert_allclose(seg_nii.affine, img_nii.affine)
            spacings.append(tuple(np.round(zooms, 3)))
            scales.append(np.percentile(img, 99))
    assert 0 < with_zone < 18
    assert len(set(spacings)) == 6  # one spacing per site
    per_site = np.array(scales).reshape(6, 3).mean(axis=1)
    assert len(np.unique(np.round(per_site, -1))) == 6


def test_cli_writes_both_sets_quickly(tmp_path):
    start = time.perf_counter()
    for kind in ('fundus', 'prostate'):
        subprocess.run(
            [sys.executable, 'tools/generate_synthetic.py', kind,
             '--out', str(tmp_path / kind), '--seed', '1', '--cases', '2',
             '--size', '32'],
            cwd=REPO,
            check=True,
            capture_output=True,
            env={'PYTHONPATH': osp.abspath(REPO), 'PATH': ''},
        )  # fmt: skip
    assert (tmp_path / 'fundus' / 'Domain4_test.list').is_file()
    assert (
        tmp_path / 'prostate' / 'HK' / 'Case01_segmentation.nii.gz'
    ).is_file()
    assert time.perf_counter() - start < 60
