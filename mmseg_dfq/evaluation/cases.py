"""From evaluated samples to cases: meta keys, label maps, 3D volumes.

A *case* is what a medical DG paper averages over: an image in ``'2d'``
mode, a volume in ``'3d'`` mode. A volume reaches the metric as slices,
spread over ranks and batches in any order; :func:`gather_volumes` puts
them back together and refuses an incomplete or repeated one rather than
measuring a different volume.
"""

from collections import defaultdict
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

# Meta keys every sample needs, and those a '3d' sample needs as well.
REQUIRED_META = ('domain', 'domain_idx', 'seen', 'case_id')
VOLUME_META = ('slice_index', 'num_slices')


def sample_name(meta) -> str:
    """A sample's name in messages: its image file, and slice if it has one.

    Args:
        meta (Mapping): The sample's metainfo (or ``to_dict()`` output).

    Returns:
        str: E.g. ``'RUNMC/Case00.nii.gz (slice 7)'``.
    """
    name = str(meta.get('img_path', '<unknown file>'))
    if meta.get('slice_index') is not None:
        name += f' (slice {meta["slice_index"]})'
    return name


def _to_numpy(data) -> np.ndarray:
    """A label map from a tensor (any device) or array, as a NumPy array."""
    if hasattr(data, 'detach'):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def label_map(data_sample: dict, key: str, name: str) -> np.ndarray:
    """Fetch ``data_sample[key]['data']`` as an (H, W) array.

    Args:
        data_sample (dict): ``SegDataSample.to_dict()`` output.
        key (str): ``'pred_sem_seg'`` or ``'gt_sem_seg'``.
        name (str): The sample's name, for the error messages.

    Returns:
        np.ndarray: The (H, W) label map.
    """
    if key not in data_sample:
        raise KeyError(
            f'DomainMetric: sample {name!r} has no {key!r}; the metric needs '
            'both the prediction and the ground truth'
        )
    field = data_sample[key]
    data = field['data'] if isinstance(field, dict) else field.data
    data = _to_numpy(data)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ValueError(
            f'DomainMetric: {key} of sample {name!r} must be a (1, H, W) '
            f'label map, got shape {data.shape}'
        )
    return data


def read_sample_meta(data_sample: dict, mode: str) -> dict:
    """The meta keys of one sample that the metric keeps.

    Args:
        data_sample (dict): ``SegDataSample.to_dict()`` output.
        mode (str): ``'2d'`` or ``'3d'`` (which also needs
            :data:`VOLUME_META`).

    Returns:
        dict: ``domain``, ``domain_idx``, ``seen``, ``case_id``,
        ``spacing`` (a tuple, or None when the sample has none), and
        ``slice_index`` / ``num_slices`` / ``img_path`` where present.
    """
    name = data_sample.get('case_id', data_sample.get('img_path', '<unknown>'))
    required = list(REQUIRED_META)
    if mode == '3d':
        required += list(VOLUME_META)
    missing = [k for k in required if k not in data_sample]
    if missing:
        raise KeyError(
            f'DomainMetric: sample {name!r} lacks the meta keys '
            f'{missing}; the test pipeline must pack them '
            '(PackDomainSegInputs, or PackSegInputs with the domain meta '
            'keys) and the dataset must set them'
        )
    meta = dict(
        domain=str(data_sample['domain']),
        domain_idx=int(data_sample['domain_idx']),
        seen=bool(data_sample['seen']),
        case_id=str(data_sample['case_id']),
        spacing=None,
    )
    if data_sample.get('spacing') is not None:
        meta['spacing'] = tuple(
            float(v) for v in np.asarray(data_sample['spacing']).ravel()
        )
    for key in VOLUME_META:
        if key in data_sample:
            meta[key] = int(data_sample[key])
    if 'img_path' in data_sample:
        meta['img_path'] = str(data_sample['img_path'])
    return meta


def pack_masks(
    labels: np.ndarray, structures: Dict[str, Sequence[int]]
) -> Dict[str, np.ndarray]:
    """Bit-packed binary mask of every structure of one slice.

    Bit-packing keeps a whole prostate domain small on every rank: a
    384 x 384 slice is 18 KiB per structure and per map.
    """
    return {
        s: np.packbits(np.isin(labels, lb)) for s, lb in structures.items()
    }


def _unpack_volume(items: List[dict], field: str, name: str) -> np.ndarray:
    """Stack the packed ``item[field][name]`` masks of sorted slices.

    Returns:
        np.ndarray: Bool volume (H, W, num_slices), slice k at [:, :, k].
    """
    height, width = items[0]['shape']
    planes = [
        np.unpackbits(item[field][name], count=height * width)
        for item in items
    ]
    volume = np.stack(planes, axis=-1).reshape(height, width, len(items))
    return volume.astype(bool)


def gather_volumes(
    results: List[dict], structures: Sequence[str]
) -> Iterator[Tuple[dict, Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
    """Reassemble the slices of every case into volumes.

    A case is its domain and its ``case_id``: the same id in two domains is
    two volumes. Every slice ``0..num_slices-1`` must be there exactly once
    and all slices must agree on the shape, ``num_slices``, ``seen`` and
    ``spacing``.

    Args:
        results (list[dict]): Slices as :class:`DomainMetric` keeps them
            (``read_sample_meta`` plus ``shape`` and the packed ``pred`` /
            ``gt`` masks), from all ranks.
        structures (Sequence[str]): The structure names.

    Yields:
        tuple: ``(case, preds, gts)``: the case's meta (``domain``,
        ``domain_idx``, ``seen``, ``case_id``, ``spacing``) and the bool
        (H, W, num_slices) volumes of each structure.
    """
    slices = defaultdict(list)
    for item in results:
        slices[(item['domain'], item['case_id'])].append(item)
    for domain, case_id in sorted(slices):
        items = slices[(domain, case_id)]
        first = items[0]
        for key in ('num_slices', 'shape', 'seen', 'spacing'):
            found = {item[key] for item in items}
            if len(found) > 1:
                raise ValueError(
                    f'DomainMetric: slices of case {case_id!r} of domain '
                    f'{domain!r} disagree on {key}: '
                    f'{sorted(map(str, found))}'
                )
        num = first['num_slices']
        counts = np.zeros(num, dtype=int)
        outside = []
        for item in items:
            k = item['slice_index']
            if 0 <= k < num:
                counts[k] += 1
            else:
                outside.append(k)
        if outside or np.any(counts != 1):
            raise ValueError(
                f'DomainMetric: case {case_id!r} of domain {domain!r} '
                f'must have every slice 0..{num - 1} exactly once; '
                'missing '
                f'{np.flatnonzero(counts == 0).tolist()}, duplicated '
                f'{np.flatnonzero(counts > 1).tolist()}, out of range '
                f'{sorted(outside)}'
            )
        items = sorted(items, key=lambda item: item['slice_index'])
        case = dict(
            domain=first['domain'],
            domain_idx=first['domain_idx'],
            seen=first['seen'],
            case_id=case_id,
            spacing=first['spacing'],
        )
        preds = {s: _unpack_volume(items, 'pred', s) for s in structures}
        gts = {s: _unpack_volume(items, 'gt', s) for s in structures}
        yield case, preds, gts


def check_unique_cases(cases: List[dict]) -> None:
    """Refuse a ``'2d'`` case that was evaluated more than once.

    A ``'2d'`` case is identified by its domain, ``case_id`` and, where the
    sample is a slice of a volume, ``slice_index``.
    """
    seen_at = defaultdict(list)
    for case in cases:
        key = (case['domain'], case['case_id'], case.get('slice_index'))
        seen_at[key].append(case.get('img_path', '<no img_path>'))
    repeated = {k: v for k, v in seen_at.items() if len(v) > 1}
    if repeated:
        lines = [
            f'  {domain}/{case_id}'
            + ('' if index is None else f' slice {index}')
            + f' x{len(paths)}: {sorted(set(paths))}'
            for (domain, case_id, index), paths in sorted(
                repeated.items(), key=str
            )[:10]
        ]
        raise ValueError(
            f'DomainMetric: {len(repeated)} case(s) were evaluated more '
            'than once in one domain and would be counted twice (two '
            'images with the same case_id, e.g. the same file stem in '
            'two folders, or one image listed twice):\n' + '\n'.join(lines)
        )
