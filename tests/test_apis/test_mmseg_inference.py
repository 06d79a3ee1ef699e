"""mmseg's own inference entry points on DFQ configs and checkpoints.

``mmseg.apis.inference_model`` (path, list, array), ``MMSegInferencer``
(paths, folder, arrays, ``out_dir``), ``show_result_pyplot`` and mmseg's
packaged ``tools/test.py`` run the CPU demo configs unchanged, and predict
exactly what our tools do: the test dataloader's samples through
``model.test_step`` (what ``tools/test.py`` evaluates), ``SegInferencer``
(``tools/infer.py``) and our ``tools/test.py``'s per-case metrics.
"""

import csv
import glob
import os.path as osp
import sys

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmseg.apis import (
    MMSegInferencer,
    inference_model,
    init_model,
    show_result_pyplot,
)
from mmseg.registry import DATASETS

from mmseg_dfq.apis import SegInferencer, nifti_slices
from mmseg_dfq.datasets.fundus_codec import decode_fundus_mask

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    mmseg_tool,
    run,
)


def labels(sample):
    """(H, W) uint8 prediction of a SegDataSample."""
    return sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)


def test_set_predictions(config, ckpt, data_root):
    """What ``tools/test.py`` evaluates: test-loader samples -> test_step.

    Returns:
        dict: ``(img_path, slice_index)`` -> (H, W) prediction.
    """
    cfg = Config.fromfile(config)
    cfg.test_dataloader.dataset.data_root = data_root
    model = init_model(cfg, ckpt, device='cpu')
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    out = {}
    with torch.no_grad():
        for i in range(len(dataset)):
            result = model.test_step(pseudo_collate([dataset[i]]))[0]
            key = (result.img_path, result.metainfo.get('slice_index'))
            out[key] = labels(result)
    return out


test_set_predictions.__test__ = False  # a helper, not a test


def fundus_test_images(root):
    return sorted(
        glob.glob(osp.join(root, 'Domain*', 'test', 'ROIs', 'image', '*'))
    )


def prostate_volumes(root, site='RUNMC'):
    return sorted(
        p
        for p in glob.glob(osp.join(root, site, 'Case*.nii.gz'))
        if '_segmentation' not in p
    )


def dice(pred, gt):
    """Foreground Dice in %, 100 when both are empty (NumPy re-statement)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    total = pred.sum() + gt.sum()
    return 100.0 if total == 0 else 200.0 * (pred & gt).sum() / total


def read_cases(path):
    with open(path) as f:
        return {row['case_id']: row for row in csv.DictReader(f)}


def test_inference_model_fundus(fundus_root, fundus_ckpt, tmp_path):
    paths = fundus_test_images(fundus_root)
    assert len(paths) == 8
    reference = test_set_predictions(FUNDUS_CONFIG, fundus_ckpt, fundus_root)
    ours = SegInferencer(FUNDUS_CONFIG, fundus_ckpt, postprocess=False)
    model = init_model(FUNDUS_CONFIG, fundus_ckpt, device='cpu')
    assert model.dataset_meta['classes'][1] == 'optic_disc_rim'

    single = [inference_model(model, p) for p in paths]
    batch = inference_model(model, paths)
    assert isinstance(batch, list) and len(batch) == len(paths)
    for path, one, many in zip(paths, single, batch):
        expected = reference[(path, None)]
        assert expected.shape == (64, 64)
        np.testing.assert_array_equal(labels(one), expected)
        np.testing.assert_array_equal(labels(many), expected)
        np.testing.assert_array_equal(ours.image(path), expected)
    # Equal predictions of a constant model would prove nothing.
    assert max(len(np.unique(labels(r))) for r in single) > 1

    out_file = tmp_path / 'vis.png'
    vis = show_result_pyplot(
        model, paths[0], single[0], show=False, out_file=str(out_file)
    )
    assert vis.shape == (64, 64, 3)
    assert cv2.imread(str(out_file)).shape == (64, 64, 3)

    # Arrays (BGR, as cv2/mmcv read them) last: for arrays mmseg's
    # inference_model rewrites the model's test pipeline in place.
    arrays = inference_model(model, [cv2.imread(p) for p in paths])
    for path, result in zip(paths, arrays):
        np.testing.assert_array_equal(labels(result), reference[(path, None)])


def test_mmseg_inferencer_fundus(fundus_root, fundus_ckpt, tmp_path):
    paths = fundus_test_images(fundus_root)
    reference = test_set_predictions(FUNDUS_CONFIG, fundus_ckpt, fundus_root)
    inferencer = MMSegInferencer(
        model=FUNDUS_CONFIG, weights=fundus_ckpt, device='cpu'
    )
    out_dir = tmp_path / 'out'
    result = inferencer(paths, out_dir=str(out_dir))
    assert len(result['predictions']) == len(paths)
    for path, pred in zip(paths, result['predictions']):
        np.testing.assert_array_equal(pred, reference[(path, None)])
    # out_dir: label PNGs in input order, overlays named after the inputs.
    masks = sorted(glob.glob(str(out_dir / 'pred' / '*_pred.png')))
    assert len(masks) == len(paths)
    for path, mask in zip(paths, masks):
        np.testing.assert_array_equal(
            cv2.imread(mask, cv2.IMREAD_UNCHANGED), reference[(path, None)]
        )
    for path in paths:
        vis = cv2.imread(str(out_dir / 'vis' / osp.basename(path)))
        assert vis is not None and vis.shape == (64, 64, 3), path

    folder = osp.dirname(paths[0])
    samples = inferencer(folder, return_datasamples=True)
    samples = samples if isinstance(samples, list) else [samples]
    assert sorted(s.img_path for s in samples) == sorted(
        p for p in paths if osp.dirname(p) == folder
    )
    for sample in samples:
        np.testing.assert_array_equal(
            labels(sample), reference[(sample.img_path, None)]
        )

    arrays = inferencer([cv2.imread(p) for p in paths])
    for path, pred in zip(paths, arrays['predictions']):
        np.testing.assert_array_equal(pred, reference[(path, None)])


def test_prostate_slices_as_arrays(prostate_root, prostate_ckpt):
    volumes = prostate_volumes(prostate_root)
    reference = test_set_predictions(
        PROSTATE_CONFIG, prostate_ckpt, prostate_root
    )
    ours = SegInferencer(PROSTATE_CONFIG, prostate_ckpt, postprocess=False)
    assert ours.kind == 'volume'
    model = init_model(PROSTATE_CONFIG, prostate_ckpt, device='cpu')
    # A path is refused with the way to go (before any array call: for
    # arrays mmseg rewrites the model's test pipeline in place).
    with pytest.raises(ValueError, match='tools/infer.py'):
        inference_model(model, volumes[0])
    inferencer = MMSegInferencer(
        model=PROSTATE_CONFIG, weights=prostate_ckpt, device='cpu'
    )
    with pytest.raises(ValueError, match='tools/infer.py'):
        inferencer(volumes[0])
    varied = False
    for path in volumes:
        slices = nifti_slices(path)
        depth = nib.load(path).shape[2]
        assert len(slices) == depth
        expected = np.stack(
            [reference[(path, k)] for k in range(depth)], axis=2
        )
        mmseg_api = np.stack(
            [labels(r) for r in inference_model(model, slices)], axis=2
        )
        np.testing.assert_array_equal(mmseg_api, expected)
        np.testing.assert_array_equal(ours.volume(path), expected)
        preds = inferencer(slices)['predictions']
        preds = preds if isinstance(preds, list) else [preds]
        np.testing.assert_array_equal(np.stack(preds, axis=2), expected)
        varied |= len(np.unique(expected)) > 1
    assert varied


@pytest.mark.parametrize('task', ['fundus', 'prostate'])
def test_mmseg_test_tool(task, request, tmp_path, fundus_root, prostate_root):
    """mmseg's packaged tools/test.py = ours = inference + NumPy Dice."""
    config = FUNDUS_CONFIG if task == 'fundus' else PROSTATE_CONFIG
    ckpt = request.getfixturevalue(f'{task}_ckpt')
    root = fundus_root if task == 'fundus' else prostate_root
    data = f'test_dataloader.dataset.data_root={root}'
    theirs, ours = tmp_path / 'mmseg.csv', tmp_path / 'ours.csv'
    run(
        [
            sys.executable,
            mmseg_tool('test.py'),
            config,
            ckpt,
            '--work-dir',
            tmp_path / 'w_mmseg',
            '--cfg-options',
            data,
            f'test_evaluator.per_case_file={theirs}',
        ],
        cwd=tmp_path,
    )
    run(
        [
            sys.executable,
            osp.join(REPO_ROOT, 'tools', 'test.py'),
            config,
            ckpt,
            '--work-dir',
            tmp_path / 'w_ours',
            '--per-case',
            ours,
            '--cfg-options',
            data,
        ],
        cwd=REPO_ROOT,
    )
    cases = read_cases(theirs)
    assert cases == read_cases(ours)

    # The same numbers from tools/infer.py's predictions (the metric's
    # post-processing) and an independent Dice.
    inferencer = SegInferencer(config, ckpt)
    if task == 'fundus':
        paths = fundus_test_images(root)
        assert len(cases) == len(paths)
        for path in paths:
            row = cases[osp.splitext(osp.basename(path))[0]]
            pred = inferencer.image(path)
            mask = path.replace('/image/', '/mask/')
            gt = decode_fundus_mask(cv2.imread(mask, cv2.IMREAD_UNCHANGED))
            for name, classes in (('OD', [1, 2]), ('OC', [2])):
                expected = dice(np.isin(pred, classes), np.isin(gt, classes))
                assert float(row[f'{name}_Dice']) == pytest.approx(
                    expected, rel=1e-5, abs=1e-4
                ), (path, name)
    else:
        volumes = prostate_volumes(root)
        assert len(cases) == len(volumes)
        for path in volumes:
            stem = osp.basename(path)[: -len('.nii.gz')]
            row = cases[f'RUNMC/{stem}']
            gt = nib.load(path.replace('.nii.gz', '_segmentation.nii.gz'))
            expected = dice(inferencer.volume(path), gt.get_fdata() > 0)
            assert float(row['Prostate_Dice']) == pytest.approx(
                expected, rel=1e-5, abs=1e-4
            ), path
