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
holes filled for fundus); ``--no-largest-cc`` keeps the raw arg-max. An
input that cannot be read is reported with its path; the others are still
segmented and the exit status is 1.
"""

import argparse
import os
import os.path as osp
import sys
from collections import Counter

import cv2
from mmengine.config import DictAction
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
from mmseg_dfq.datasets.transforms import (
    decode_nifti,
    read_image_as_stored,
    read_nifti_header,
)


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


def write_fundus(inferencer, path, out_dir, overlay):
    """Segment one image; write its mask (and overlay) PNG."""
    labels = inferencer.image(path)
    stem = file_stem(path)
    mask_path = osp.join(out_dir, f'{stem}_mask.png')
    if not cv2.imwrite(mask_path, FUNDUS_GREY[labels]):
        raise OSError(f'cannot write {mask_path}')
    if overlay:
        # As stored (EXIF orientation ignored), like the model's input.
        bgr = read_image_as_stored(path)
        rgb = fundus_overlay(bgr[..., ::-1], labels)
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
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for path in tqdm(inputs, desc='segmenting', disable=len(inputs) < 2):
        try:
            inferencer.check_input(path)
            if inferencer.kind == 'volume':
                write_volume(
                    inferencer, path, args.out, args.batch_size, args.overlay
                )
            else:
                write_fundus(
                    inferencer, path, args.out, args.overlay is not False
                )
        except (OSError, ValueError, IndexError) as err:
            # One unreadable file should not cost the rest of a folder.
            tqdm.write(f'error: {err}', file=sys.stderr)
            failed.append(path)
    done = len(inputs) - len(failed)
    print(f'{done} of {len(inputs)} input(s) segmented; results in {args.out}')
    if failed:
        raise SystemExit(
            f'error: {len(failed)} input(s) failed: ' + ', '.join(failed)
        )


if __name__ == '__main__':
    main()
