"""The fundus mask encoding of the DoFE / RAM-DSIR releases, both ways.

Masks store grey levels, not labels: 255 background, 128 optic-disc rim,
0 optic cup. The loader decodes them (:func:`decode_fundus_mask`), and the
inferencer and the synthetic generator encode labels back
(:func:`encode_fundus_labels`), so the levels and the thresholds live here
only.
"""

import warnings
from typing import Optional

import numpy as np

# Grey level of label 0 (background), 1 (disc rim), 2 (cup).
FUNDUS_GREY = np.array([255, 128, 0], dtype=np.uint8)
# Decoding thresholds of the authors (tolerant of JPEG-like noise around
# each level): > 200 background, 51..200 rim, <= 50 cup.
FUNDUS_BG_MIN = 201
FUNDUS_CUP_MAX = 50


def encode_fundus_labels(labels: np.ndarray) -> np.ndarray:
    """Map labels 0 / 1 / 2 to the grey levels of the release masks.

    Args:
        labels (np.ndarray): Integer labels in {0, 1, 2}, any shape.

    Returns:
        np.ndarray: uint8 grey levels of the same shape (255 / 128 / 0).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in 'ui':
        raise ValueError(
            f'fundus labels must be integers, got dtype {labels.dtype}'
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FUNDUS_GREY)):
        raise ValueError(
            f'fundus labels must be 0 (background), 1 (rim) or 2 (cup), got '
            f'values {labels.min()}..{labels.max()}'
        )
    return FUNDUS_GREY[labels]


def decode_fundus_mask(
    mask: np.ndarray,
    path: Optional[str] = None,
    tolerance: int = 32,
    max_off_fraction: float = 0.01,
) -> np.ndarray:
    """Map fundus mask grey levels to labels with the authors' thresholds.

    The encoding is 255 background, 128 disc rim, 0 cup. The thresholds are
    tolerant (compression noise and smoothed edges of real releases decode
    to the nearest band), but a grey level more than ``tolerance`` away
    from all three levels (33..95 and 161..222 with the default 32) is not
    noise: such pixels are counted, a ``UserWarning`` names the file, their
    fraction and values, and past ``max_off_fraction`` of the mask the file
    is refused, since its labels would be guesses.

    Args:
        mask (np.ndarray): Grey levels, shape (H, W), integer values in
            [0, 255].
        path (str, optional): The file the mask came from, for messages.
            Default: None.
        tolerance (int): Largest distance to 0, 128 or 255 that counts as
            that level. Default: 32.
        max_off_fraction (float): Largest fraction of pixels off the
            encoding that is decoded (with a warning); more raises.
            Default: 0.01.

    Returns:
        np.ndarray: uint8 labels of shape (H, W): 0 background (> 200),
        1 optic-disc rim (51..200), 2 optic cup (<= 50).
    """
    name = path if path is not None else '<array>'
    mask = np.asarray(mask)
    if mask.dtype.kind not in 'ui':
        raise ValueError(
            f'fundus mask must hold integer grey levels, got dtype '
            f'{mask.dtype}: {name}'
        )
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f'fundus mask values span {mask.min()}..{mask.max()}, outside '
            f'the 0/128/255 grey encoding: {name}'
        )
    counts = np.bincount(mask.ravel().astype(np.intp), minlength=256)
    levels = np.arange(256)
    nearest = np.min(np.abs(levels[:, None] - FUNDUS_GREY[None, :]), axis=1)
    off = np.flatnonzero((nearest > tolerance) & (counts > 0))
    if off.size:
        num_off = int(counts[off].sum())
        fraction = num_off / mask.size
        worst = off[np.argsort(-counts[off], kind='stable')][:8]
        values = ', '.join(f'{v} ({counts[v]} px)' for v in worst)
        if off.size > worst.size:
            values += f', ... ({off.size} values in all)'
        text = (
            f'fundus mask has {num_off} pixels ({fraction:.2%}) with grey '
            f'levels more than {tolerance} from 0/128/255 - {values}'
        )
        if fraction > max_off_fraction:
            raise ValueError(
                f'{text}; more than {max_off_fraction:.2%} of the mask is '
                f'not in the 255 (background) / 128 (rim) / 0 (cup) '
                f'encoding: {name}'
            )
        warnings.warn(
            f'{text}; decoded by the thresholds (> 200 background, '
            f'51..200 rim, <= 50 cup): {name}',
            UserWarning,
            stacklevel=2,
        )
    labels = np.ones(mask.shape, dtype=np.uint8)
    labels[mask >= FUNDUS_BG_MIN] = 0
    labels[mask <= FUNDUS_CUP_MAX] = 2
    return labels
