"""Images with an EXIF orientation tag are read as stored, everywhere.

cv2 (and PIL's ``exif_transpose``) would rotate such a JPEG while its PNG
mask is read as stored, so a square image silently misaligns with its mask
and a non-square one changes shape. The test images are JPEGs with four
flat-coloured quadrants and orientation 6 (rotate 90 degrees clockwise);
cv2's default read is checked to rotate them, so the tests can fail.
"""

import importlib.util
import os.path as osp
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmseg.apis import MMSegInferencer, inference_model, init_model
from mmseg.registry import DATASETS, TRANSFORMS
from PIL import Image

from mmseg_dfq.apis import SegInferencer, fundus_overlay
from mmseg_dfq.engine.visualization_hook import DomainVisualizationHook

from ..helpers import FUNDUS_CONFIG, REPO_ROOT

# RGB of the quadrants: top-left, top-right, bottom-left, bottom-right.
QUADRANTS = ((230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20))


def quadrant_image(height, width):
    rgb = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    for (rows, cols), colour in zip(
        [(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None))]
        + [(slice(h, None), slice(0, w)), (slice(h, None), slice(w, None))],
        QUADRANTS,
    ):
        rgb[rows, cols] = colour
    return rgb


def write_exif_jpeg(path, height, width, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(quadrant_image(height, width)).save(
        path, 'JPEG', quality=95, exif=exif.tobytes()
    )
    return str(path)


def assert_as_stored(bgr, height, width):
    """Shape and quadrant colours of the image as stored (BGR input)."""
    assert bgr.shape == (height, width, 3)
    for (y, x), colour in zip(
        [(height // 4, width // 4), (height // 4, 3 * width // 4)]
        + [(3 * height // 4, width // 4), (3 * height // 4, 3 * width // 4)],
        QUADRANTS,
    ):
        np.testing.assert_allclose(
            bgr[y, x, ::-1].astype(int), colour, atol=12
        )


@pytest.fixture
def tall_jpeg(tmp_path):
    """48 x 64 (H x W) as stored; displayed 64 x 48 after EXIF rotation."""
    path = write_exif_jpeg(tmp_path / 'tagged.jpg', 48, 64)
    rotated = cv2.imread(path)
    assert rotated.shape == (64, 48, 3), 'cv2 did not apply the EXIF tag'
    return path


def test_loaders_read_as_stored(tall_jpeg):
    loaders = (
        TRANSFORMS.build(dict(type='LoadFundusImageFromFile')),
        # As the test pipelines select it.
        TRANSFORMS.build(dict(type='LoadImageFromFile', _scope_='mmseg_dfq')),
    )
    assert type(loaders[1]).__name__ == 'LoadImageOrSliceFromFile'
    for loader in loaders:
        results = loader(dict(img_path=tall_jpeg))
        assert_as_stored(results['img'], 48, 64)
        assert results['ori_shape'] == (48, 64)
    # The hook's image reader (tools/test.py --show-dir) needs only this.
    hook = SimpleNamespace(backend_args=None)
    painted = DomainVisualizationHook._read_image(hook, tall_jpeg)
    assert_as_stored(painted[..., ::-1], 48, 64)


def test_dataset_keeps_image_and_mask_aligned(tmp_path):
    root = tmp_path / 'fundus'
    for kind in ('image', 'mask'):
        (root / 'Domain1' / 'test' / 'ROIs' / kind).mkdir(parents=True)
    image = 'Domain1/test/ROIs/image/tagged.jpg'
    mask = 'Domain1/test/ROIs/mask/tagged.png'
    # Square: the rotation would not show in the shape.
    write_exif_jpeg(root / image, 64, 64)
    grey = np.full((64, 64), 255, np.uint8)
    grey[:32, :32] = 0  # cup on the top-left (red) quadrant
    grey[:32, 32:] = 128  # rim on the top-right (green) one
    cv2.imwrite(str(root / mask), grey)
    (root / 'Domain1_test.list').write_text(f'{image} {mask}\n')
    cfg = Config.fromfile(FUNDUS_CONFIG)
    pipelines = dict(
        test=cfg.test_dataloader.dataset.pipeline,
        # The training loaders only (no random augmentation).
        train=cfg.train_dataloader.dataset.pipeline[:2]
        + [cfg.train_dataloader.dataset.pipeline[-1]],
    )
    for name, pipeline in pipelines.items():
        dataset = DATASETS.build(
            dict(
                type='FundusDGDataset',
                data_root=str(root),
                domains=[1],
                split='test',
                pipeline=pipeline,
            )
        )
        sample = dataset[0]
        img = sample['inputs'].numpy().transpose(1, 2, 0)  # BGR
        gt = sample['data_samples'].gt_sem_seg.data[0].numpy()
        assert gt.shape == (64, 64), name
        for label, colour in ((2, QUADRANTS[0]), (1, QUADRANTS[1])):
            size = img.shape[0] / 64
            ys, xs = np.nonzero(gt == label)
            # Centre of the labelled quadrant, in the (resized) input.
            y, x = int(ys.mean() * size), int(xs.mean() * size)
            np.testing.assert_allclose(
                img[y, x, ::-1].astype(int), colour, atol=12, err_msg=name
            )


def test_inference_outputs_keep_stored_shape(tall_jpeg, fundus_ckpt, tmp_path):
    # Raw arg-max: the untrained test model's largest 8-connected component
    # (the metric's post-processing) may cover the whole small image.
    ours = SegInferencer(FUNDUS_CONFIG, fundus_ckpt, postprocess=False)
    assert ours.image(tall_jpeg).shape == (48, 64)
    model = init_model(FUNDUS_CONFIG, fundus_ckpt, device='cpu')
    result = inference_model(model, tall_jpeg)
    assert result.pred_sem_seg.shape == (48, 64)
    inferencer = MMSegInferencer(
        model=FUNDUS_CONFIG, weights=fundus_ckpt, device='cpu'
    )
    assert inferencer(tall_jpeg)['predictions'].shape == (48, 64)

    # tools/infer.py's files: mask and overlay in the stored orientation.
    spec = importlib.util.spec_from_file_location(
        'infer_tool', osp.join(REPO_ROOT, 'tools', 'infer.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.write_image_mask(ours, tall_jpeg, str(tmp_path), overlay=True)
    mask = cv2.imread(str(tmp_path / 'tagged_mask.png'), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (48, 64)
    overlay = cv2.imread(str(tmp_path / 'tagged_overlay.png'))
    assert overlay.shape == (48, 64, 3)
    # The overlay paints the labels on the pixels as stored (cv2 told to
    # ignore the EXIF tag), not on the rotated image cv2 reads by default.
    stored = cv2.imread(
        tall_jpeg, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    expected = fundus_overlay(stored[..., ::-1], ours.image(tall_jpeg))
    np.testing.assert_array_equal(overlay, expected[..., ::-1])
