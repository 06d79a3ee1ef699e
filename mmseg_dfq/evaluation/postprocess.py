"""Post-processing of predicted masks: largest component and hole filling.

The DFQ authors clean every predicted structure before measuring it, and a
prediction saved by ``tools/infer.py`` should be the mask that was measured,
so :class:`~mmseg_dfq.evaluation.DomainMetric` and the inferencer share
this module. What a dataset wants is a fact of the dataset: its
``METAINFO['post_process']``, ``dict(largest_cc=..., fill_holes=...,
connectivity=...)`` (read by :func:`post_process_from_meta`), which an
evaluator or inferencer argument may override.

The authors' protocols, for reference: fundus images keep the largest
8-connected component (``skimage.measure.label``'s default, full
connectivity 2) and fill its holes; prostate volumes keep the largest
6-connected 3D component (``scipy.ndimage.label``'s default, face
connectivity 1) and fill nothing.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .surface import _bounding_box

__all__ = [
    'PostProcess',
    'fill_holes',
    'largest_connected_component',
    'post_process_from_meta',
    'postprocess_connectivity',
]

# Keys of a dataset's METAINFO['post_process'].
POST_PROCESS_KEYS = ('largest_cc', 'fill_holes', 'connectivity')
# A case is an image ('2d') or a volume assembled from its slices ('3d').
EVAL_MODES = ('2d', '3d')


def check_eval_mode(mode, where: str) -> str:
    """``mode`` if it is one of :data:`EVAL_MODES`, else a ValueError.

    Args:
        mode: The evaluation mode to check.
        where (str): What holds it, named in the error (e.g.
            ``'MyDataset: metainfo eval_mode'``).

    Returns:
        str: ``mode``.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f'{where} must be one of {EVAL_MODES}, got {mode!r}')
    return mode


def largest_connected_component(mask, connectivity: int = 1) -> np.ndarray:
    """Keep the largest connected component of a binary mask (2D or 3D).

    Ties between equally large components keep the one with the smallest
    label (first in C order), as ``np.argmax`` of the component sizes does
    in the authors' code.

    Args:
        mask (np.ndarray): Binary mask, any ndim.
        connectivity (int): 1 for face neighbours (4 in 2D, 6 in 3D,
            ``scipy.ndimage.label``'s default), ``mask.ndim`` for full
            neighbours (8 in 2D, 26 in 3D, ``skimage.measure.label``'s
            default). Default: 1.

    Returns:
        np.ndarray: Bool mask of the same shape; empty if ``mask`` is empty.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    # Components never leave the bounding box, so labelling it is enough.
    box = _bounding_box(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, num = ndimage.label(mask[box], structure=structure)
    if num == 1:
        out[box] = labels > 0
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out[box] = labels == int(np.argmax(sizes))
    return out


def fill_holes(mask, connectivity: int = 1) -> np.ndarray:
    """Fill the holes of a binary mask, as ``scipy.ndimage.binary_fill_holes``.

    A hole is a background region not connected (through background voxels
    with the given connectivity) to the array border.

    Args:
        mask (np.ndarray): Binary mask, any ndim.
        connectivity (int): Connectivity of the background. Default: 1
            (scipy's default).

    Returns:
        np.ndarray: Bool mask of the same shape.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    out = mask.copy()
    if not mask.any():
        return out
    # Outside the bounding box grown by one voxel everything is background
    # connected to the border, so filling the grown box gives the same holes.
    box = _bounding_box(mask, margin=1)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    out[box] = ndimage.binary_fill_holes(mask[box], structure=structure)
    return out


def postprocess_connectivity(
    mode: str, connectivity: Optional[int] = None
) -> int:
    """Checked connectivity of the largest-component step.

    Args:
        mode (str): ``'2d'`` or ``'3d'``: the dimension of a case.
        connectivity (int, optional): 1 (face neighbours) up to the number
            of dimensions (full neighbourhood); None picks the authors'
            (2 in ``'2d'``, 1 in ``'3d'``), for a model whose dataset does
            not declare its post-processing. Default: None.

    Returns:
        int: The connectivity, for ``generate_binary_structure``.
    """
    check_eval_mode(mode, 'postprocess_connectivity: mode')
    ndim = 2 if mode == '2d' else 3
    if connectivity is None:
        return 2 if mode == '2d' else 1
    if isinstance(connectivity, bool) or connectivity not in range(
        1, ndim + 1
    ):
        raise ValueError(
            f'cc_connectivity must be 1..{ndim} in {mode!r} mode (1 = face '
            f'neighbours, {ndim} = full), got {connectivity!r}'
        )
    return int(connectivity)


@dataclass(frozen=True)
class PostProcess:
    """The post-processing of one predicted structure mask.

    Args:
        largest_cc (bool): Keep only the largest connected component (of
            the whole mask: a 3D mask is one volume).
        connectivity (int): Neighbourhood of that component, see
            :func:`largest_connected_component`.
        fill_holes (bool): Then fill the holes. A 2D mask's holes; in a 3D
            mask those of every slice ``mask[:, :, k]`` separately: an
            in-plane hole is what a slice model gets wrong, and 3D cavities
            are rare. The background is face-connected
            (``binary_fill_holes``' default).
    """

    largest_cc: bool
    connectivity: int
    fill_holes: bool

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """Post-process one binary mask.

        Args:
            mask (np.ndarray): (H, W) or (H, W, num_slices) binary mask.

        Returns:
            np.ndarray: Bool mask of the same shape.
        """
        mask = np.asarray(mask).astype(bool, copy=False)
        if self.largest_cc:
            mask = largest_connected_component(mask, self.connectivity)
        if self.fill_holes:
            if mask.ndim == 2:
                mask = fill_holes(mask)
            else:
                mask = mask.copy()
                for k in range(mask.shape[2]):
                    mask[:, :, k] = fill_holes(mask[:, :, k])
        return mask


def post_process_from_meta(post_process, mode: str, where: str) -> dict:
    """Check a dataset's ``METAINFO['post_process']`` (the one checker of
    this fact: the datasets and the metric both call it).

    Args:
        post_process (dict): ``dict(largest_cc=bool, fill_holes=bool,
            connectivity=int)``; connectivity is scipy's rank (1 = face
            neighbours, up to the number of dimensions of a case). The
            switches may also be 0 / 1 (a config may write them so).
        mode (str): ``'2d'`` or ``'3d'`` (the valid connectivities).
        where (str): What holds it, for the error messages.

    Returns:
        dict: The three keys, checked (switches as bools).

    Raises:
        ValueError: Naming ``where`` and what is wrong.
    """
    if not isinstance(post_process, dict):
        raise ValueError(
            f"{where}: 'post_process' must be a dict with exactly the keys "
            f'{list(POST_PROCESS_KEYS)}, got {post_process!r}'
        )
    missing = [k for k in POST_PROCESS_KEYS if k not in post_process]
    unknown = sorted(set(post_process) - set(POST_PROCESS_KEYS))
    if missing or unknown:
        raise ValueError(
            f"{where}: 'post_process' needs exactly the keys "
            f'{list(POST_PROCESS_KEYS)}; missing {missing}, unknown {unknown}'
        )
    switches = {}
    for key in ('largest_cc', 'fill_holes'):
        value = post_process[key]
        if not (
            isinstance(value, (bool, np.bool_))
            or (isinstance(value, (int, np.integer)) and value in (0, 1))
        ):
            raise ValueError(
                f"{where}: post_process['{key}'] must be True or False, got "
                f'{value!r}'
            )
        switches[key] = bool(value)
    try:
        connectivity = postprocess_connectivity(
            mode, post_process['connectivity']
        )
    except ValueError as err:
        raise ValueError(f'{where}: post_process {err}') from None
    return dict(**switches, connectivity=connectivity)
