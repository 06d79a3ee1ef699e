"""tools/infer.py and tools/analysis/* on generated data, as users run them."""

import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FUNDUS_CFG = osp.join(REPO, 'configs/dfq/dfq_mit-tiny_demo_fundus.py')
PROSTATE_CFG = osp.join(REPO, 'configs/dfq/dfq_mit-tiny_demo_prostate.py')


def run_tool(*args, ok=True, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    if ok:
        assert proc.returncode == 0, tail
    else:
        assert proc.returncode != 0, tail
    return proc.stdout + proc.stderr


def save_untrained(config, path, seed=0):
    """An mmengine-format checkpoint of a randomly initialised model."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmseg_dfq  # noqa: F401

    init_default_scope('mmseg')
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    from mmseg_dfq.compat import adapt_cfg_to_device

    adapt_cfg_to_device(cfg)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmseg_dfq.datasets.synthetic import make_fundus, make_prostate

    root = tmp_path_factory.mktemp('infer')
    make_fundus(str(root / 'fundus'), seed=3, cases=5, size=64)
    make_prostate(
        str(root / 'prostate'), seed=3, cases=2, size=48, slices=(6, 8)
    )
    return dict(
        root=root,
        fundus=str(root / 'fundus'),
        prostate=str(root / 'prostate'),
        fundus_ckpt=save_untrained(FUNDUS_CFG, str(root / 'f.pth')),
        fundus_ckpt2=save_untrained(FUNDUS_CFG, str(root / 'f2.pth'), 1),
        prostate_ckpt=save_untrained(PROSTATE_CFG, str(root / 'p.pth')),
    )


def test_infer_fundus_folder(data, tmp_path):
    images = osp.join(data['fundus'], 'Domain2', 'test', 'ROIs', 'image')
    run_tool(
        'tools/infer.py',
        FUNDUS_CFG,
        data['fundus_ckpt'],
        images,
        '--out',
        str(tmp_path),
    )
    names = sorted(os.listdir(images))
    assert names
    for name in names:
        stem = osp.splitext(name)[0]
        src = cv2.imread(osp.join(images, name))
        mask = cv2.imread(
            str(tmp_path / f'{stem}_mask.png'), cv2.IMREAD_UNCHANGED
        )
        overlay = cv2.imread(str(tmp_path / f'{stem}_overlay.png'))
        assert mask.shape == src.shape[:2]
        assert set(np.unique(mask)) <= {0, 128, 255}
        assert overlay.shape == src.shape


def test_infer_nifti_folder_keeps_affine(data, tmp_path):
    site = osp.join(data['prostate'], 'BMC')
    out = run_tool(
        'tools/infer.py',
        PROSTATE_CFG,
        data['prostate_ckpt'],
        site,
        '--out',
        str(tmp_path),
        '--batch-size',
        '3',
    )
    volumes = sorted(f for f in os.listdir(site) if '_segmentation' not in f)
    assert f'{len(volumes)} input(s) segmented' in out
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
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}


def test_infer_bad_inputs_name_the_file(data, tmp_path):
    missing = str(tmp_path / 'nope.png')
    out = run_tool(
        'tools/infer.py',
        FUNDUS_CFG,
        data['fundus_ckpt'],
        missing,
        '--out',
        str(tmp_path / 'o'),
        ok=False,
    )
    assert 'nope.png' in out
    corrupt = tmp_path / 'broken.nii.gz'
    corrupt.write_bytes(b'not a nifti at all')
    out = run_tool(
        'tools/infer.py',
        PROSTATE_CFG,
        data['prostate_ckpt'],
        str(corrupt),
        '--out',
        str(tmp_path / 'o'),
        ok=False,
    )
    assert 'broken.nii.gz' in out
    odd = tmp_path / 'notes.txt'
    odd.write_text('x')
    out = run_tool(
        'tools/infer.py',
        FUNDUS_CFG,
        data['fundus_ckpt'],
        str(odd),
        '--out',
        str(tmp_path / 'o'),
        ok=False,
    )
    assert 'notes.txt' in out and 'unsupported' in out


def _readable_png(path):
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0  # not a blank canvas


def test_covariance_map_two_models(data, tmp_path):
    out_png = str(tmp_path / 'cov.png')
    out = run_tool(
        'tools/analysis/covariance_map.py',
        FUNDUS_CFG,
        data['fundus_ckpt'],
        '--config2',
        FUNDUS_CFG,
        '--ckpt2',
        data['fundus_ckpt2'],
        '--labels',
        'a',
        'b',
        '--data-root',
        data['fundus'],
        '--level',
        '-2',
        '--num-images',
        '3',
        '--out',
        out_png,
    )
    values = [
        float(line.rsplit('= ', 1)[1].split()[0])
        for line in out.splitlines()
        if 'off-diagonal' in line
    ]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    _readable_png(out_png)


def test_tsne_by_domain(data, tmp_path):
    out_png = str(tmp_path / 'tsne.png')
    out = run_tool(
        'tools/analysis/tsne_features.py',
        FUNDUS_CFG,
        data['fundus_ckpt'],
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
        'Domain1/OD_Dice': 90.0,
        'Domain2/OD_Dice': 80.0,
        'Domain1/OC_Dice': 70.0,
        'Domain2/OC_Dice': None,
        'mean/OD_Dice': 85.0,
        'Domain1/n_cases': 3,
    }
    a, b = tmp_path / 'a.json', tmp_path / 'b.json'
    a.write_text(json.dumps(metrics))
    b.write_text(json.dumps({k: v for k, v in metrics.items()}))
    out_png = str(tmp_path / 'bars.png')
    run_tool(
        'tools/analysis/plot_domain_metrics.py',
        str(a),
        str(b),
        '--labels',
        'x',
        'y',
        '--out',
        out_png,
    )
    _readable_png(out_png)
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'acc': 1.0}))
    out = run_tool(
        'tools/analysis/plot_domain_metrics.py',
        str(bad),
        '--out',
        str(tmp_path / 'x.png'),
        ok=False,
    )
    assert 'bad.json' in out
