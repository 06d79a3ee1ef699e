"""Plain overlays: pixel values against a NumPy re-statement, the writer."""

import os.path as osp

import cv2
import numpy as np
import pytest

from mmseg_dfq.engine.overlay import OverlayWriter, paint_overlay, paint_pair

PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]


def disc_case(size=64):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    label = np.where(r < 8, 2, np.where(r < 20, 1, 0))
    image = np.dstack([(xx * 3) % 256, (yy * 3) % 256, xx * 0 + 90])
    return image.astype(np.uint8), label


def test_blend_and_contours():
    image, label = disc_case()
    out = paint_overlay(image, label, PALETTE, alpha=0.4, contour=False)
    color = np.asarray(PALETTE, np.float64)[label]
    expected = np.where(
        (label > 0)[..., None], 0.6 * image + 0.4 * color, image
    )
    # cv2.addWeighted rounds to nearest.
    assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(out[label == 0], image[label == 0])

    outlined = paint_overlay(image, label, PALETTE, alpha=0.4)
    # Outer boundary pixels (a 4-neighbour outside the class) take the
    # class colour; pixels well inside keep the blend.
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    inner = cv2.erode((label == 1).astype(np.uint8), cross)
    rim = (label == 1) & (inner == 0)
    outer = rim & (np.hypot(*(np.mgrid[:64, :64] - 32)) > 15)
    assert outer.any()
    np.testing.assert_array_equal(outlined[outer], [[255, 0, 0]] * outer.sum())
    np.testing.assert_array_equal(outlined[32, 32], out[32, 32])


def test_pair_layout_and_sizes():
    image, label = disc_case()
    pred = np.roll(label, 3, axis=1)
    pair = paint_pair(image, pred, label, PALETTE)
    assert pair.shape == (64, 128, 3)
    np.testing.assert_array_equal(
        pair[:, :64], paint_overlay(image, label, PALETTE)
    )
    np.testing.assert_array_equal(
        pair[:, 64:], paint_overlay(image, pred, PALETTE)
    )
    # A smaller image (a network-sized slice) is resized to the labels.
    small = cv2.resize(image, (32, 32))
    assert paint_pair(small, pred).shape == (64, 64, 3)
    # Nothing to paint: the image comes back unchanged.
    np.testing.assert_array_equal(
        paint_overlay(image, np.zeros_like(label)), image
    )
    with pytest.raises(ValueError, match='label must be'):
        paint_overlay(image, label[None])


def test_writer_threads_and_errors(tmp_path):
    image, label = disc_case()
    path = str(tmp_path / 'image.png')
    cv2.imwrite(path, image[..., ::-1])
    writer = OverlayWriter(str(tmp_path / 'out'), PALETTE, num_threads=2)
    written = [
        writer.submit('from_path', label, label, image_path=path),
        writer.submit('from_array', label, None, image=image),
    ]
    writer.close()
    got = cv2.imread(written[0])[..., ::-1]
    np.testing.assert_array_equal(
        got, paint_pair(image, label, label, PALETTE)
    )
    assert cv2.imread(written[1]).shape == (64, 64, 3)
    with pytest.raises(RuntimeError, match='after close'):
        writer.submit('late', label, image=image)

    writer = OverlayWriter(str(tmp_path / 'bad'), num_threads=1)
    missing = str(tmp_path / 'missing.png')
    writer.submit('x', label, image_path=missing)
    with pytest.raises(RuntimeError, match='missing.png'):
        writer.close()
    writer = OverlayWriter(str(tmp_path / 'o'), num_threads=1)
    with pytest.raises(ValueError, match='bad file stem'):
        writer.submit('a/b', label, image=image)
    writer.close()
    assert osp.isdir(str(tmp_path / 'o'))


def test_visualization_hook_writes_overlays(tmp_path):
    """DomainVisualizationHook paints where mmseg's visualiser would save,
    from the image file, with the dataset palette; bad painter refused."""
    import types

    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    from mmseg_dfq.engine import DomainVisualizationHook

    visualizer = SegLocalVisualizer.get_instance(
        'test_overlay_hook',
        vis_backends=[dict(type='LocalVisBackend')],
        save_dir=str(tmp_path / 'show'),
    )
    visualizer.dataset_meta = dict(
        classes=('bg', 'rim', 'cup'), palette=PALETTE
    )
    with pytest.raises(ValueError, match='painter must be'):
        DomainVisualizationHook(painter='matplotlib')
    hook = DomainVisualizationHook(draw=True, interval=1)

    image, label = disc_case()
    path = str(tmp_path / 'case7.png')
    cv2.imwrite(path, image[..., ::-1])
    pred = np.roll(label, 2, axis=0)
    sample = SegDataSample(
        metainfo=dict(img_path=path, domain='Domain2', case_id='case7')
    )
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None])
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred)[None])
    runner = types.SimpleNamespace(iter=5, log_dir=str(tmp_path / 'log'))
    hook.after_test_iter(runner, 0, dict(inputs=[None]), [sample])
    hook.after_test_epoch(runner)
    out = tmp_path / 'show' / 'vis_data' / 'vis_image' / 'Domain2_case7_5.png'
    got = cv2.imread(str(out))[..., ::-1]
    np.testing.assert_array_equal(got, paint_pair(image, pred, label, PALETTE))
