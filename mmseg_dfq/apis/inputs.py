"""What to segment: telling images from volumes, listing a folder, slices."""

import logging
import os
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np
from mmengine.logging import print_log

from ..datasets.base import IMAGE_EXTS, name_list
from ..datasets.nifti import (
    NIFTI_EXTS,
    SEG_SUFFIX,
    decode_nifti,
    is_nifti,
    read_nifti_header,
)
from ..datasets.transforms.volume import normalise_volume, slice_25d


def input_kind(path: str) -> Optional[str]:
    """Tell an image from a NIfTI volume by the file name.

    Args:
        path (str): A file name.

    Returns:
        str | None: 'volume', 'image', or None for other extensions.
    """
    if is_nifti(path):
        return 'volume'
    if path.lower().endswith(IMAGE_EXTS):
        return 'image'
    return None


def find_inputs(path: str) -> Tuple[List[str], List[str]]:
    """List the images / volumes to segment in a file or folder.

    Files of a folder with other extensions (``notes.txt``, ``x.webp``) and
    its sub-folders are not segmented; a warning names them.

    Args:
        path (str): An image, a NIfTI volume, or a folder of either.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a file has an unsupported extension, or a folder
            holds nothing to segment.

    Returns:
        tuple[list[str], list[str]]: The sorted inputs, and the ground-truth
        volumes (``*_segmentation.nii*``) of a folder that were left out.
    """
    if not osp.exists(path):
        raise FileNotFoundError(f'input not found: {path}')
    if osp.isfile(path):
        if input_kind(path) is None:
            raise ValueError(
                f'unsupported file type (expected one of '
                f'{", ".join(IMAGE_EXTS + NIFTI_EXTS)}): {path}'
            )
        return [path], []
    files, skipped, ignored = [], [], []
    for name in sorted(os.listdir(path)):
        full = osp.join(path, name)
        if not osp.isfile(full):
            ignored.append(name + os.sep)
            continue
        if input_kind(name) is None:
            ignored.append(name)
            continue
        # The SAML layout keeps labels beside the volumes: not inputs.
        if SEG_SUFFIX + '.nii' in name.lower():
            skipped.append(full)
        else:
            files.append(full)
    # Never passed over in silence (a .webp or .gif is not segmented
    # either: the extensions above are the ones the loaders read).
    others = (
        f'{len(ignored)} other file(s) / folder(s) (not '
        f'{", ".join(IMAGE_EXTS + NIFTI_EXTS)}): {name_list(ignored)}'
    )
    if not files:
        raise ValueError(
            f'no image ({", ".join(IMAGE_EXTS)}) or NIfTI volume found in '
            f'folder {path}' + (f'; it holds {others}' if ignored else '')
        )
    if ignored:
        print_log(
            f'{path}: not segmenting {others}',
            logger='current',
            level=logging.WARNING,
        )
    return files, skipped


def nifti_slices(path: str) -> List[np.ndarray]:
    """The 2.5D slices of a NIfTI volume, as a volume model's inputs.

    Checked (header included), decoded and min-max scaled as the volume
    data sets do, then cut as ``LoadProstateSlice`` cuts them, so
    ``inference_model(model, nifti_slices(path))`` (mmseg's API) predicts
    slice k of the volume as ``tools/test.py`` does. Post-processing
    (largest 3D component) and NIfTI output are :class:`SegInferencer`'s /
    ``tools/infer.py``'s job.

    Args:
        path (str): A ``.nii`` / ``.nii.gz`` volume.

    Returns:
        list[np.ndarray]: One float32 (H, W, 3) array in [-1, 1] per slice
        ``volume[:, :, k]``.
    """
    # The header is checked as everywhere else (a voxel size that is not
    # positive and finite is refused), so this function and tools/infer.py
    # accept the same files.
    read_nifti_header(path)
    vol = normalise_volume(decode_nifti(path), path)
    return [slice_25d(vol, k) for k in range(vol.shape[2])]
