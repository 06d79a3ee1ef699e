"""Segment new fundus images or NIfTI volumes with a trained checkpoint.

``python tools/infer.py CONFIG CKPT INPUT --out DIR``

INPUT is a fundus image (png/jpg/tif/bmp), a folder of images, a NIfTI
volume (.nii/.nii.gz) or a folder of volumes (``*_segmentation.nii*``
files in a folder are ground truth and are skipped, which is said once).
Writes

- fundus: ``<stem>_mask.png`` in the dataset's encoding (255 background,
  128 disc rim, 0 cup; the input's size) and ``<stem>_overlay.png``
  (rim green, cup blue, translucent over the image);
- NIfTI: ``<stem>_pred.nii.gz`` (uint8 labels, the input's shape) with the
  source volume's affine and header, so it overlays the input in ITK-SNAP
  or 3D Slicer; with an explicit ``--overlay`` also ``<stem>_overlay.png``,
  the middle slice with the prediction in red (array layout, not a
  radiological view).

The preprocessing is the config's test pipeline and the post-processing the
config's ``DomainMetric`` one (largest connected component per structure,
holes filled for fundus); ``--no-largest-cc`` keeps the raw arg-max.

One bad input never stops a folder: volumes whose slices are smaller than
the network accepts (its patch embeddings and attention reductions; the
minimum is found once by probing the model) are refused up front with the
minimum size, and any error while segmenting one input is reported with
its path; the others are still segmented and the exit status is 1. A
checkpoint that does not fit the config's model (another class count,
head or backbone) is refused before anything is segmented, in one line
naming the file and the weights that differ.
"""

import argparse
import os
import os.path as osp
import sys
from collections import Counter
from typing import Optional

import cv2
import numpy as np
import torch
from mmengine.config import DictAction
from mmseg.registry import DATASETS
from tqdm import tqdm

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)
from mmseg_dfq.apis import (
    FUNDUS_GREY,
    SegInferencer,
    file_stem,
    find_inputs,
    fundus_overlay,
    save_label_volume,
    volume_slice_overlay,
)
from mmseg_dfq.compat import CheckpointError
from mmseg_dfq.datasets import FundusDGDataset
from mmseg_dfq.datasets.mask_values import encoding_table
from mmseg_dfq.datasets.nifti import decode_nifti, read_nifti_header
from mmseg_dfq.datasets.transforms import read_image_as_stored


def parse_args():
    parser = argparse.ArgumentParser(
        description='Segment fundus images or NIfTI volumes'
    )
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('input', help='image, volume, or a folder of either')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--device', default='cpu', help="'cpu', 'cuda' or 'cuda:i'"
    )
    parser.add_argument(
        '--overlay',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='write overlay PNGs (default: for fundus images; for volumes '
        'only when given: the middle slice)',
    )
    parser.add_argument(
        '--largest-cc',
        action=argparse.BooleanOptionalAction,
        default=True,
        help="post-process as the config's DomainMetric: largest connected "
        'component per structure (+ holes filled for fundus) (default: yes)',
    )
    parser.add_argument(
        '--batch-size', type=int, default=8, help='slices per forward pass'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as in tools/test.py',
    )
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    return args


def min_input_size(model, channels=3, limit=4096):
    """Smallest square input side that the model's forward pass accepts.

    Too small an input fails inside a convolution whose kernel is larger
    than its (down-sampled) input, e.g. the stride-8 attention reduction
    of MiT's first stage. Probed with zero inputs, by doubling and then
    bisecting (the failure is monotone in the size).

    Args:
        model (BaseSegmentor): The model, in eval mode.
        channels (int): Input channels. Default: 3.
        limit (int): Largest side tried. Default: 4096.

    Returns:
        int: The side in pixels (1 if every size works).
    """
    param = next(model.parameters())

    def works(side):
        x = param.new_zeros((1, channels, side, side))
        try:
            with torch.no_grad():
                model._forward(x)
        except RuntimeError:
            return False
        return True

    if works(1):
        return 1
    lo, hi = 1, 2
    while not works(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            raise RuntimeError(f'the model fails on every input up to {limit}')
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    return hi


def check_volume_size(path, min_size):
    """Refuse a volume whose slices are smaller than ``min_size``.

    Args:
        path (str): NIfTI file.
        min_size (int): From :func:`min_input_size`.

    Raises:
        ValueError: Naming the file, its slice size and the minimum.
    """
    shape = read_nifti_header(path)[0]
    if len(shape) >= 2 and min(shape[:2]) < min_size:
        raise ValueError(
            f'{path}: its slices are {shape[0]} x {shape[1]} voxels, smaller '
            f'than the {min_size} x {min_size} that this model needs at the '
            'least (its patch embeddings and attention reductions shrink '
            'the input by up to 32x); resample or pad the volume'
        )


def mask_encoding(cfg) -> Optional[np.ndarray]:
    """Stored value of each class in a written mask, as the data set stores
    its masks.

    Fundus masks use the release's grey levels; a data set with a
    ``mask_values`` map (``MultiSiteDataset``) gets each class's first stored
    value; otherwise the mask holds the class indices.

    Args:
        cfg (mmengine.Config): The model's config.

    Returns:
        np.ndarray | None: Look-up table class -> stored value, or None for
        class indices.
    """
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    dataset_cls = DATASETS.get(dataset.get('type', ''))
    if isinstance(dataset_cls, type) and issubclass(
        dataset_cls, FundusDGDataset
    ):
        return FUNDUS_GREY
    values = dataset.get('mask_values')
    return (
        encoding_table(values, 'test_dataloader.dataset') if values else None
    )


def write_image_mask(inferencer, path, out_dir, overlay):
    """Segment one image; write its mask (and overlay) PNG.

    The mask is encoded as the model's data set stores masks
    (:func:`mask_encoding`); the overlay uses the data set's palette.
    """
    labels = inferencer.image(path)
    stem = file_stem(path)
    mask_path = osp.join(out_dir, f'{stem}_mask.png')
    table = mask_encoding(inferencer.cfg)
    if table is None:
        encoded = labels.astype(np.uint8)
    elif labels.size and labels.max() >= len(table):
        raise ValueError(
            f'{path}: predicted class {int(labels.max())} has no stored '
            f"value in the data set's mask encoding {table.tolist()}"
        )
    else:
        encoded = table[labels]
    if not cv2.imwrite(mask_path, encoded):
        raise OSError(f'cannot write {mask_path}')
    if overlay:
        # As stored (EXIF orientation ignored), like the model's input.
        bgr = read_image_as_stored(path)
        palette = (inferencer.model.dataset_meta or {}).get('palette')
        rgb = fundus_overlay(
            bgr[..., ::-1],
            labels,
            colours=None if table is FUNDUS_GREY or not palette else palette,
        )
        cv2.imwrite(osp.join(out_dir, f'{stem}_overlay.png'), rgb[..., ::-1])


def write_volume(inferencer, path, out_dir, batch_size, overlay):
    """Segment one NIfTI volume; write the labels as NIfTI (+ a PNG)."""
    shape = read_nifti_header(path)[0]
    total = shape[2] if len(shape) == 3 else None
    with tqdm(
        total=total, desc=osp.basename(path), unit='slice', leave=False
    ) as bar:
        labels = inferencer.volume(path, batch_size, progress=bar.update)
    out_path = osp.join(out_dir, f'{file_stem(path)}_pred.nii.gz')
    save_label_volume(labels, path, out_path)
    if overlay:
        rgb = volume_slice_overlay(decode_nifti(path), labels)
        cv2.imwrite(
            osp.join(out_dir, f'{file_stem(path)}_overlay.png'), rgb[..., ::-1]
        )


def main():
    args = parse_args()
    try:
        inputs, skipped = find_inputs(args.input)
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    if skipped:
        print(
            f'skipping {len(skipped)} ground-truth file(s) '
            f'(*_segmentation.nii*) in {args.input}'
        )
    clashes = [s for s, n in Counter(map(file_stem, inputs)).items() if n > 1]
    if clashes:
        raise SystemExit(
            f'error: inputs in {args.input} share the name(s) {clashes} '
            'and would overwrite each other'
        )
    try:
        inferencer = SegInferencer(
            args.config,
            args.checkpoint,
            device=args.device,
            postprocess=args.largest_cc,
            cfg_options=args.cfg_options,
        )
    except (OSError, ValueError, CheckpointError) as err:
        # CheckpointError: unreadable, or another model's weights.
        raise SystemExit(f'error: {err}') from None
    os.makedirs(args.out, exist_ok=True)
    min_size = None
    if inferencer.kind == 'volume':
        min_size = min_input_size(inferencer.model)
    failed = []
    for path in tqdm(inputs, desc='segmenting', disable=len(inputs) < 2):
        try:
            inferencer.check_input(path)
            if inferencer.kind == 'volume':
                check_volume_size(path, min_size)
                write_volume(
                    inferencer, path, args.out, args.batch_size, args.overlay
                )
            else:
                write_image_mask(
                    inferencer, path, args.out, args.overlay is not False
                )
        except (OSError, ValueError, IndexError) as err:
            # One unreadable file should not cost the rest of a folder.
            tqdm.write(f'error: {err}', file=sys.stderr)
            failed.append(path)
        except Exception as err:  # noqa: BLE001 - reported with its path
            tqdm.write(
                f'error: {path}: {type(err).__name__}: '
                f'{str(err).splitlines()[0] if str(err) else ""}',
                file=sys.stderr,
            )
            failed.append(path)
    done = len(inputs) - len(failed)
    print(f'{done} of {len(inputs)} input(s) segmented; results in {args.out}')
    if failed:
        raise SystemExit(
            f'error: {len(failed)} input(s) failed: ' + ', '.join(failed)
        )


if __name__ == '__main__':
    main()
