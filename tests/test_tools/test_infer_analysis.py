"""tools/infer.py and tools/analysis/* on generated data, as users run them.

Tiny DFQ models (MiT with 8..64 channels, one layer per stage) with random
weights: the tests check what the tools write and that inference sees
exactly the test pipeline's inputs, not segmentation quality.
"""

import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CFG = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_{}.py')
TINY_MODEL = """
model = dict(
    backbone=dict(embed_dims=8, num_layers=[1, 1, 1, 1]),
    decode_head=dict(in_channels=[8, 16, 40, 64], channels=16),
)
"""
# The stock SegFormer (no RDWT, SegformerHead) of the same size: the
# baseline of the covariance figure.
TINY_BASELINE = """
model = dict(
    backbone=dict(
        _delete_=True,
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=8,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
    ),
    decode_head=dict(
        _delete_=True,
        type='SegformerHead',
        in_channels=[8, 16, 40, 64],
        in_index=[0, 1, 2, 3],
        channels=16,
        num_classes=3,
        norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'),
    ),
)
"""


def run_tool(*args, ok=True):
    """Run a tool as a user would; return its stdout + stderr."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, out[-3000:]
    return out


def write_config(path, task, body):
    """A config inheriting the CPU demo of ``task`` with ``body`` added."""
    base = DEMO_CFG.format(task)
    path.write_text(f'_base_ = [{base!r}]\n{body}')
    return str(path)


def save_untrained(config, path, seed):
    """An mmengine-format checkpoint of a randomly initialised model."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmseg_dfq.config import load_config

    init_default_scope('mmseg')
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmseg_dfq.testing.synthetic import make_fundus, make_prostate

    root = tmp_path_factory.mktemp('infer')
    make_fundus(str(root / 'fundus'), seed=3, cases=5, size=64)
    make_prostate(
        str(root / 'prostate'), seed=3, cases=2, size=48, slices=(6, 8)
    )
    f_cfg = write_config(root / 'f.py', 'fundus', TINY_MODEL)
    p_cfg = write_config(root / 'p.py', 'prostate', TINY_MODEL)
    b_cfg = write_config(root / 'b.py', 'fundus', TINY_BASELINE)
    return dict(
        root=root,
        fundus=str(root / 'fundus'),
        prostate=str(root / 'prostate'),
        f_cfg=f_cfg,
        p_cfg=p_cfg,
        b_cfg=b_cfg,
        f_ckpt=save_untrained(f_cfg, root / 'f.pth', 0),
        p_ckpt=save_untrained(p_cfg, root / 'p.pth', 0),
        b_ckpt=save_untrained(b_cfg, root / 'b.pth', 1),
    )


def fundus_images(data, domain='Domain2'):
    return osp.join(data['fundus'], domain, 'test', 'ROIs', 'image')


def test_infer_fundus_folder(data, tmp_path):
    src = tmp_path / 'in'
    shutil.copytree(fundus_images(data), src)
    first = sorted(os.listdir(src))[0]
    # A non-square image of another size: the mask must come back at it.
    img = cv2.imread(str(src / first))
    cv2.imwrite(str(src / 'odd.jpg'), cv2.resize(img, (80, 56)))
    out = tmp_path / 'out'
    run_tool(
        'tools/infer.py', data['f_cfg'], data['f_ckpt'], src, '--out', out
    )
    names = sorted(os.listdir(src))
    assert len(names) == 3
    for name in names:
        stem = osp.splitext(name)[0]
        image = cv2.imread(str(src / name))
        mask = cv2.imread(str(out / f'{stem}_mask.png'), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / f'{stem}_overlay.png'))
        assert mask.ndim == 2 and mask.dtype == np.uint8
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 128, 255}
        assert overlay.shape == image.shape
    assert len(os.listdir(out)) == 2 * len(names)


def test_inference_sees_the_test_pipeline(data):
    """Inputs equal the test dataloader's; masks are the API's labels."""
    from mmseg_dfq.apis import FUNDUS_GREY, SegInferencer
    from mmseg_dfq.apis.features import build_analysis_dataset
    from mmseg_dfq.datasets.nifti import decode_nifti
    from mmseg_dfq.datasets.transforms import normalise_volume

    inf = SegInferencer(data['f_cfg'], data['f_ckpt'], postprocess=False)
    assert inf.kind == 'image'
    ds = build_analysis_dataset(inf.cfg, data['fundus'], [2])
    item = ds[0]
    path = item['data_samples'].img_path
    packed = inf.pack_image(path)
    assert torch.equal(packed['inputs'], item['inputs'])
    ref = inf.model.test_step(
        dict(inputs=[item['inputs']], data_samples=[item['data_samples']])
    )[0]
    np.testing.assert_array_equal(
        inf.image(path), ref.pred_sem_seg.data[0].numpy()
    )
    with pytest.raises(ValueError, match='Case00.nii.gz'):
        inf.check_input('x/Case00.nii.gz')

    inf = SegInferencer(data['p_cfg'], data['p_ckpt'], postprocess=False)
    assert inf.kind == 'volume'
    ds = build_analysis_dataset(inf.cfg, data['prostate'], [2])
    idx = [i for i in range(len(ds)) if ds.get_data_info(i)['slice_index']]
    item = ds[idx[0]]
    meta = item['data_samples'].metainfo
    vol = normalise_volume(decode_nifti(meta['img_path']), meta['img_path'])
    packed = inf.pack_slice(vol, meta['img_path'], meta['slice_index'])
    assert torch.equal(packed['inputs'], item['inputs'])
    labels = inf.volume(meta['img_path'], batch_size=3)
    ref = inf.model.test_step(
        dict(inputs=[item['inputs']], data_samples=[item['data_samples']])
    )[0]
    np.testing.assert_array_equal(
        labels[:, :, meta['slice_index']], ref.pred_sem_seg.data[0].numpy()
    )
    with pytest.raises(ValueError, match='a.png'):
        inf.check_input('a.png')
    assert list(FUNDUS_GREY) == [255, 128, 0]


def test_postprocess_matches_scipy(data):
    """Largest component + holes filled per structure, as the metric does."""
    from mmseg_dfq.apis import SegInferencer

    inf = SegInferencer(data['f_cfg'], data['f_ckpt'])
    labels = np.zeros((40, 40), np.uint8)
    labels[5:30, 5:30] = 1  # big disc
    labels[12:22, 12:22] = 2  # cup inside it
    labels[15:17, 15:17] = 1  # ... with a hole
    labels[34:38, 34:38] = 2  # stray cup-class blob, outside the disc
    labels[2:4, 34:37] = 1  # stray disc blob
    # A cup blob touching the big cup only at a corner: 8-connected to it
    # (the authors' skimage default), so it is kept with it.
    labels[22:25, 22:25] = 2
    out = inf._postprocess(labels)

    def ref(mask):
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        return ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))

    disc = ref(labels >= 1)
    cup = ref(labels == 2)
    expected = np.where(cup, 2, np.where(disc, 1, 0))
    np.testing.assert_array_equal(out, expected)
    assert out[16, 16] == 2 and out[35, 35] == 0 and out[3, 35] == 0
    assert out[23, 23] == 2


def test_infer_nifti_folder_keeps_geometry(data, tmp_path):
    site = osp.join(data['prostate'], 'BMC')
    out = run_tool(
        'tools/infer.py',
        data['p_cfg'],
        data['p_ckpt'],
        site,
        '--out',
        tmp_path,
        '--batch-size',
        '3',
    )
    volumes = sorted(f for f in os.listdir(site) if '_segmentation' not in f)
    assert len(volumes) == 2
    assert out.count('skipping 2 ground-truth file(s)') == 1
    assert '2 of 2 input(s) segmented' in out
    assert sorted(os.listdir(tmp_path)) == sorted(
        f.replace('.nii.gz', '_pred.nii.gz') for f in volumes
    )
    for f in volumes:
        src = nib.load(osp.join(site, f))
        pred = nib.load(str(tmp_path / f.replace('.nii.gz', '_pred.nii.gz')))
        assert pred.shape == src.shape
        assert np.allclose(pred.affine, src.affine)
        assert np.allclose(pred.header.get_zooms(), src.header.get_zooms())
        labels = np.asarray(pred.dataobj)
        assert labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1}


def test_infer_oblique_nii_single_file(data, tmp_path):
    """A rotated affine, separate qform/sform codes, plain .nii input."""
    src = nib.load(osp.join(data['prostate'], 'BMC', 'Case00.nii.gz'))
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [[0, -s, 0.8 * c, 10], [c * 0.9, 0, 0, -20], [s, c, 2.5, 5]]
        + [[0, 0, 0, 1]]
    )
    img = nib.Nifti1Image(np.asarray(src.dataobj), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path = tmp_path / 'oblique.nii'
    nib.save(img, str(path))
    out = tmp_path / 'out'
    run_tool(
        'tools/infer.py',
        data['p_cfg'],
        data['p_ckpt'],
        path,
        '--out',
        out,
        '--no-largest-cc',
        '--overlay',
    )
    pred = nib.load(str(out / 'oblique_pred.nii.gz'))
    # --overlay given: the middle slice as PNG, in the array layout.
    png = cv2.imread(str(out / 'oblique_overlay.png'))
    assert png.shape == ref_shape(path)[:2] + (3,)
    ref = nib.load(str(path))
    assert pred.shape == ref.shape
    assert np.allclose(pred.affine, ref.affine)
    assert np.allclose(pred.get_qform(), ref.get_qform())
    assert int(pred.header['qform_code']) == 1
    assert int(pred.header['sform_code']) == 2


def ref_shape(path):
    return tuple(nib.load(str(path)).shape)


def test_infer_bad_inputs_name_the_file(data, tmp_path):
    out = run_tool(
        'tools/infer.py',
        data['f_cfg'],
        data['f_ckpt'],
        tmp_path / 'nope.png',
        '--out',
        tmp_path / 'o',
        ok=False,
    )
    assert 'nope.png' in out and 'not found' in out
    odd = tmp_path / 'notes.txt'
    odd.write_text('x')
    out = run_tool(
        'tools/infer.py',
        data['f_cfg'],
        data['f_ckpt'],
        odd,
        '--out',
        tmp_path / 'o',
        ok=False,
    )
    assert 'notes.txt' in out and 'unsupported' in out

    # A corrupt file in a folder: named, the others still segmented.
    folder = tmp_path / 'images'
    folder.mkdir()
    good = sorted(os.listdir(fundus_images(data)))[0]
    shutil.copy(osp.join(fundus_images(data), good), folder / 'good.png')
    (folder / 'broken.png').write_bytes(b'\x89PNG not really')
    out = run_tool(
        'tools/infer.py',
        data['f_cfg'],
        data['f_ckpt'],
        folder,
        '--out',
        tmp_path / 'f',
        '--no-overlay',
        ok=False,
    )
    assert 'broken.png' in out and '1 of 2 input(s) segmented' in out
    assert os.listdir(tmp_path / 'f') == ['good_mask.png']

    corrupt = tmp_path / 'vols'
    corrupt.mkdir()
    (corrupt / 'Case09.nii.gz').write_bytes(b'not a nifti at all')
    out = run_tool(
        'tools/infer.py',
        data['p_cfg'],
        data['p_ckpt'],
        corrupt,
        '--out',
        tmp_path / 'p',
        ok=False,
    )
    assert 'Case09.nii.gz' in out and '0 of 1' in out


def _readable_png(path):
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0  # not a blank canvas


def test_covariance_map_baseline_vs_dfq(data, tmp_path):
    from mmseg_dfq.apis import mean_abs_covariance, off_diagonal_mean

    out_png = tmp_path / 'an' / 'cov.png'  # a folder made by the tool
    out = run_tool(
        'tools/analysis/covariance_map.py',
        data['b_cfg'],
        data['b_ckpt'],
        '--config2',
        data['f_cfg'],
        '--ckpt2',
        data['f_ckpt'],
        '--labels',
        'SegFormer',
        'DFQ',
        '--data-root',
        data['fundus'],
        '--level',
        '1',
        '--num-images',
        '2',
        '--out',
        out_png,
    )
    lines = [x for x in out.splitlines() if 'off-diagonal' in x]
    assert [x.split(':')[0] for x in lines] == ['SegFormer', 'DFQ']
    # 4 domains x 2 test images, stage-2 channels.
    assert all('(16 channels, 8 images)' in x for x in lines)
    values = [float(x.split('= ')[1].split()[0]) for x in lines]
    assert all(0 <= v <= 1 for v in values)
    _readable_png(out_png)

    # The printed statistic against NumPy on random correlated maps.
    rng = np.random.default_rng(0)
    feats = [
        torch.from_numpy(rng.normal(size=(6, 5, 7)).astype(np.float32))
        for _ in range(3)
    ]
    feats[0][1] = 2 * feats[0][0] + 1  # perfectly correlated pair
    covs = []
    for f in feats:
        x = f.numpy().reshape(6, -1).astype(np.float64)
        x = (x - x.mean(1, keepdims=True)) / np.sqrt(
            x.var(1, keepdims=True) + 1e-5
        )
        covs.append(np.abs(x @ x.T / (x.shape[1] - 1)))
    ref = np.mean(covs, 0)
    got = mean_abs_covariance(feats)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert got[0, 1] > 0.3  # the correlated pair shows up
    off = (ref.sum() - np.trace(ref)) / 30
    assert off_diagonal_mean(got) == pytest.approx(off, rel=1e-4)


def test_tsne_by_domain(data, tmp_path):
    out_png = tmp_path / 'an' / 'tsne.png'
    out = run_tool(
        'tools/analysis/tsne_features.py',
        data['f_cfg'],
        data['f_ckpt'],
        '--data-root',
        data['fundus'],
        '--num-images',
        '4',
        '--out',
        out_png,
    )
    line = [x for x in out.splitlines() if 'silhouette' in x][0]
    # 5 cases per domain with test_fraction 0.4: 2 test images each.
    assert '(8 images, 4 domains)' in line
    assert -1 <= float(line.split(': ')[1].split()[0]) <= 1
    _readable_png(out_png)


def test_plot_domain_metrics(tmp_path):
    metrics = {
        'Domain1/n_cases': 3,
        'Domain1/OD_Dice': 90.0,
        'Domain1/OD_ASD': 1.5,
        'Domain2/OD_Dice': 80.0,
        'Domain2/OD_ASD': 2.5,
        'Domain1/OC_Dice': 70.0,
        'Domain1/OC_ASD': 3.0,
        'Domain2/OC_Dice': None,
        'Domain2/OC_ASD': None,
        'mean/OD_Dice': 85.0,
        'mean/OD_ASD': 2.0,
    }
    a, b = tmp_path / 'a.json', tmp_path / 'b.json'
    a.write_text(json.dumps(metrics))
    b.write_text(json.dumps({k: v for k, v in metrics.items() if v}))
    out_png = tmp_path / 'plots' / 'bars.png'
    run_tool(
        'tools/analysis/plot_domain_metrics.py',
        a,
        b,
        '--labels',
        'x',
        'y',
        '--metric',
        'Dice',
        'ASD',
        '--out',
        out_png,
    )
    _readable_png(out_png)
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'acc': 1.0}))
    out = run_tool(
        'tools/analysis/plot_domain_metrics.py',
        bad,
        '--out',
        tmp_path / 'x.png',
        ok=False,
    )
    assert 'bad.json' in out and 'Dice' in out


def test_written_masks_follow_the_data_set_encoding():
    """Fundus grey levels, a multi-site mask_values map, else class ids."""
    import importlib.util

    from mmengine.config import Config

    spec = importlib.util.spec_from_file_location(
        '_infer_tool', osp.join(REPO, 'tools', 'infer.py')
    )
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)

    fundus = Config.fromfile(DEMO_CFG.format('fundus'))
    assert infer.mask_encoding(fundus).tolist() == [255, 128, 0]
    multisite = Config.fromfile(
        osp.join(
            REPO, 'configs', 'multisite', 'dfq_mit-tiny_demo_multisite-2d.py'
        )
    )
    assert infer.mask_encoding(multisite).tolist() == [0, 255]
    # Several stored values of one class: the first (smallest) is written.
    multisite.test_dataloader.dataset.mask_values = {0: 0, 1: 1, 2: 1}
    assert infer.mask_encoding(multisite).tolist() == [0, 1]
    multisite.test_dataloader.dataset.pop('mask_values')
    assert infer.mask_encoding(multisite) is None
