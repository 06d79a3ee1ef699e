"""Segment new fundus images or NIfTI volumes with a trained checkpoint.

``python tools/infer.py CONFIG CKPT INPUT --out DIR``

INPUT is a fundus image, a folder of images, a NIfTI volume or a folder of
volumes (``*_segmentation.nii*`` files in a folder are skipped). Writes

- fundus: ``<stem>_mask.png`` in the dataset's encoding (255 background,
  128 disc rim, 0 cup; the input's size) and ``<stem>_overlay.png``;
- NIfTI: ``<stem>_pred.nii.gz`` (uint8 labels) with the source volume's
  affine and header, so it overlays the input in ITK-SNAP / 3D Slicer.
"""

import argparse
import os
import os.path as osp

import cv2
import nibabel as nib
import numpy as np
from tqdm import tqdm

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)
from mmseg_dfq.apis import (
    FUNDUS_GREY,
    SegInferencer,
    find_inputs,
    fundus_overlay,
)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Segment fundus images or NIfTI volumes'
    )
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('input', help='image, volume, or a folder of either')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--device', default='cpu', help="e.g. 'cuda:0'")
    parser.add_argument(
        '--no-overlay',
        action='store_true',
        help='do not write fundus overlay PNGs',
    )
    parser.add_argument(
        '--no-largest-cc',
        action='store_true',
        help='keep every connected component of the prediction',
    )
    parser.add_argument(
        '--batch-size', type=int, default=8, help='slices per forward pass'
    )
    return parser.parse_args()


def _stem(path):
    name = osp.basename(path)
    for ext in ('.nii.gz', '.nii'):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return osp.splitext(name)[0]


def write_fundus(inferencer, path, out_dir, overlay):
    labels = inferencer.image(path)
    stem = _stem(path)
    cv2.imwrite(osp.join(out_dir, f'{stem}_mask.png'), FUNDUS_GREY[labels])
    if overlay:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        rgb = fundus_overlay(bgr[..., ::-1], labels)
        cv2.imwrite(osp.join(out_dir, f'{stem}_overlay.png'), rgb[..., ::-1])


def write_volume(inferencer, path, out_dir, batch_size):
    try:
        src = nib.load(path)
    except Exception as err:
        raise ValueError(f'cannot read NIfTI {path!r}: {err}') from err
    depth = src.shape[2] if len(src.shape) == 3 else 0
    with tqdm(total=depth, desc=osp.basename(path), leave=False) as bar:
        labels = inferencer.volume(path, batch_size, progress=bar.update)
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    # Labels, not intensities: no rescaling slope/intercept.
    header.set_slope_inter(1, 0)
    pred = nib.Nifti1Image(labels, src.affine, header)
    nib.save(pred, osp.join(out_dir, f'{_stem(path)}_pred.nii.gz'))


def main():
    args = parse_args()
    inputs = find_inputs(args.input)
    os.makedirs(args.out, exist_ok=True)
    inferencer = SegInferencer(
        args.config,
        args.checkpoint,
        device=args.device,
        largest_cc=not args.no_largest_cc,
    )
    for path in tqdm(inputs, desc='segmenting', disable=len(inputs) < 2):
        if path.lower().endswith(('.nii', '.nii.gz')):
            write_volume(inferencer, path, args.out, args.batch_size)
        else:
            write_fundus(inferencer, path, args.out, not args.no_overlay)
    print(f'{len(inputs)} input(s) segmented; results in {args.out}')


if __name__ == '__main__':
    main()
