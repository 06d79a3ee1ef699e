"""Per-domain medical segmentation metric (Dice, ASD, HD95) for mmseg."""

import logging
import os
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Dict, Optional, Sequence

import numpy as np
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS
from PIL import Image

from ..datasets.nifti import file_stem
from .cases import (
    check_unique_cases,
    gather_volumes,
    label_map,
    pack_masks,
    read_sample_meta,
    sample_name,
)
from .postprocess import PostProcess, check_eval_mode, post_process_from_meta
from .report import (
    DISTANCE_METRICS,
    case_unit,
    log_table,
    summarize_domains,
    write_cases_csv,
)
from .surface import dice, surface_metrics

__all__ = ['DomainMetric', 'prediction_file_name']

_KNOWN_METRICS = ('Dice', 'ASD', 'ASSD', 'HD95')
# Argument -> where the dataset declares it: (METAINFO key, sub-key).
_META_SOURCE = OrderedDict(
    structures=('structures', None),
    mode=('eval_mode', None),
    largest_cc=('post_process', 'largest_cc'),
    cc_connectivity=('post_process', 'connectivity'),
    fill_holes=('post_process', 'fill_holes'),
)


def _check_structures(structures, where: str) -> 'OrderedDict[str, list]':
    """``dict(name -> labels)`` with a non-empty list of ints per name."""
    if not isinstance(structures, dict) or not structures:
        raise ValueError(
            f'DomainMetric: structures ({where}) must be a non-empty dict of '
            f'name -> labels, got {structures!r}'
        )
    checked = OrderedDict()
    for name, labels in structures.items():
        if isinstance(labels, (int, np.integer)):
            labels = [labels]
        labels = list(labels)
        if not labels or not all(
            isinstance(label, (int, np.integer))
            and not isinstance(label, bool)
            for label in labels
        ):
            raise ValueError(
                f'DomainMetric: structure {name!r} ({where}) needs a '
                f'non-empty list of integer labels, got {structures[name]!r}'
            )
        checked[str(name)] = [int(label) for label in labels]
    return checked


def _check_mode(mode, where: str) -> str:
    return check_eval_mode(mode, f'DomainMetric: mode ({where})')


def prediction_file_name(data_sample: dict) -> str:
    """The PNG path of a sample's predicted label map, in ``output_dir``.

    One folder per domain (the sample's ``domain`` meta; none for a sample
    without it), since sites often name their files alike (``case00.png``
    in every hospital's folder). In it, an image is named as mmseg's
    ``IoUMetric`` names it, after its file: ``<stem>.png``. A slice of a
    volume (a sample with ``slice_index``), whose ``img_path`` is the whole
    volume, is named after its volume and slice, ``<stem>_<k>.png`` with k
    zero-padded to 3 digits (more for a volume of over 1000 slices):
    slice 7 of ``RUNMC/Case00.nii.gz`` is ``RUNMC/Case00_007.png``.

    Args:
        data_sample (dict): ``SegDataSample.to_dict()`` output.

    Returns:
        str: The path relative to ``output_dir``.
    """
    stem = file_stem(str(data_sample.get('img_path', 'unknown')))
    index = data_sample.get('slice_index')
    if index is None:
        name = f'{stem}.png'
    else:
        num = data_sample.get('num_slices')
        width = max(3, len(str(int(num) - 1))) if num else 3
        name = f'{stem}_{int(index):0{width}d}.png'
    domain = data_sample.get('domain')
    return name if domain is None else osp.join(str(domain), name)


@METRICS.register_module()
class DomainMetric(BaseMetric):
    """Per-case Dice / ASD / HD95 averaged per domain, as in medical DG papers.

    Each case (an image in ``'2d'`` mode, a volume assembled from its slices
    in ``'3d'`` mode) gets a foreground Dice and surface distances per
    structure, computed as ``medpy.metric.binary`` does (see
    :mod:`mmseg_dfq.evaluation.surface`). A domain reports the mean over its
    cases; ``mean/...`` is the mean over the domains present and
    ``mean_unseen/...`` the mean over the held-out (unseen) domains, present
    whenever one is evaluated (alone, as in the default validation set, or
    with seen domains): the key for ``CheckpointHook(save_best=...)``.
    Unlike ``IoUMetric``'s mDice, pixels are never pooled across cases and
    background is not a class.

    What is measured is a fact of the dataset, read from its metainfo
    (mmengine's evaluator hands the metric ``dataset_meta`` after building
    it): ``structures`` (name -> labels), ``eval_mode`` (``'2d'`` /
    ``'3d'``) and ``post_process`` (``dict(largest_cc=bool,
    fill_holes=bool, connectivity=int)``). An argument given here overrides
    the dataset's value; with neither, the metric stops with an error
    naming the missing key.

    Empty masks: a case where both prediction and ground truth are empty for
    a structure has Dice 100 and distances 0. If exactly one is empty, Dice is
    0 and the distances are undefined: the case is left out of that
    structure's distance means and counted in ``<domain>/<S>_n_excluded``,
    unless ``empty_distance`` gives them a value.

    Samples must carry the meta keys ``domain``, ``domain_idx``, ``seen`` and
    ``case_id``; ``'3d'`` mode also needs ``slice_index`` and ``num_slices``
    (slice k of a volume is ``volume[:, :, k]``). Distances are in mm when
    the samples carry ``spacing`` (voxel size in mm, array axis order; in
    ``'2d'`` mode its first two values) and ``use_spacing`` is True,
    otherwise in pixels / voxels; the log and the per-case CSV state the
    unit. A case is identified by its
    domain and ``case_id`` (and ``slice_index`` where a ``'2d'`` sample has
    one): the same id in two domains is two cases, while the same case
    evaluated twice in ``'2d'`` mode (e.g. two images with one file stem)
    stops the evaluation with an error naming them instead of counting it
    twice.

    ``output_dir`` (set by mmseg's ``tools/test.py --out``, as for
    ``IoUMetric``) writes each sample's predicted label map there as a PNG
    (see :func:`prediction_file_name` for the names). ``format_only`` then
    only writes them, as ``IoUMetric(format_only=True)`` does: no ground
    truth is read and no metric is computed.

    Args:
        structures (dict[str, list[int]], optional): Structure name -> the
            labels that make up its binary mask, e.g. ``dict(OD=[1, 2],
            OC=[2])``. None reads ``dataset_meta['structures']``.
            Default: None.
        mode (str, optional): ``'2d'``: every sample is a case (fundus
            images). ``'3d'``: slices are gathered by ``case_id``, stacked by
            ``slice_index`` into (H, W, num_slices) volumes and evaluated in
            3D (prostate). None reads ``dataset_meta['eval_mode']``.
            Default: None.
        metrics (Sequence[str]): Any of ``'Dice'``, ``'ASD'`` (directed,
            prediction to ground truth, as medpy's ``asd``), ``'ASSD'``,
            ``'HD95'``. Default: ('Dice', 'ASD', 'HD95').
        largest_cc (bool, optional): Keep only the largest connected
            component of each predicted structure; in ``'3d'`` mode of the
            whole volume. None reads
            ``dataset_meta['post_process']['largest_cc']``. Default: None.
        cc_connectivity (int, optional): Neighbourhood of that component:
            1 = face neighbours (4 in 2D, 6 in 3D) up to the number of
            dimensions = full (8 in 2D, 26 in 3D). None reads
            ``dataset_meta['post_process']['connectivity']``. Hole filling
            always uses face-connected background. Default: None.
        fill_holes (bool, optional): Fill the holes of each predicted
            structure after ``largest_cc``; in ``'3d'`` mode those of every
            slice separately (see :class:`PostProcess`). None reads
            ``dataset_meta['post_process']['fill_holes']``. Default: None.
        restrict_to_gt_slices (bool): ``'3d'`` only, off by default. Zero the
            prediction on every slice whose ground truth is empty for that
            structure before post-processing. This reproduces the DFQ
            authors' prostate evaluation, which LOOKS AT THE ANSWER; use it
            only to compare with their published numbers. Default: False.
        empty_distance (float, optional): The ASD / ASSD / HD95 of a case
            whose prediction or ground truth (not both) is empty for a
            structure, counted in the means. The DFQ authors' fundus
            evaluation gives 100 (pixels) when the prediction is empty.
            None leaves such cases out of the distance means (counted as
            excluded). Default: None.
        use_spacing (bool): Measure distances in mm where the samples carry
            a ``spacing``. False measures them in pixels / voxels whatever
            the samples carry: the DFQ authors' prostate evaluation calls
            medpy without a voxel spacing. Default: True.
        dice_smooth (float): ``s`` in a case's Dice ``(2 |P & G| + s) /
            (|P| + |G| + s)``. 0 is the exact Dice (medpy's ``dc``; 100
            when both masks are empty). The DFQ authors' fundus evaluation
            adds 1 (one pixel among the ~10^4-10^5 of a disc). Default: 0.
        per_case_file (str, optional): Path of a CSV file written at every
            evaluation with one row per case (domain, case_id, seen and each
            structure's metrics). Default: None.
        output_dir (str, optional): Folder for a PNG of every sample's
            predicted label map, uint8 labels as the model predicts them
            (``pred_sem_seg``, before this metric's post-processing; plus 1
            where the sample has ``reduce_zero_label``, as ``IoUMetric``
            does), in one folder per domain: ``<domain>/<stem>.png`` for an
            image, ``<domain>/<volume stem>_<k>.png`` for a volume slice
            (see :func:`prediction_file_name`). Names that two samples
            share are reported with a warning at the evaluation.
            Default: None.
        format_only (bool): ``IoUMetric``'s switch: only write the PNGs to
            ``output_dir``; no ground truth or domain meta keys are needed
            and the evaluation returns no metrics. Default: False.
        keep_results (bool): Accepted because mmseg's ``tools/test.py
            --out`` sets it with ``output_dir``; as for ``IoUMetric`` it
            changes nothing: the PNGs are the output and are always kept
            (``CityscapesMetric``, which writes them only to evaluate them,
            deletes them unless it is set). Default: True.
        collect_device (str): Device used to gather results from the ranks,
            ``'cpu'`` or ``'gpu'``. Default: 'cpu'.
        prefix (str, optional): Prefix of the metric names. Default: None.
    """

    def __init__(
        self,
        structures: Optional[Dict[str, Sequence[int]]] = None,
        mode: Optional[str] = None,
        metrics: Sequence[str] = ('Dice', 'ASD', 'HD95'),
        largest_cc: Optional[bool] = None,
        cc_connectivity: Optional[int] = None,
        fill_holes: Optional[bool] = None,
        restrict_to_gt_slices: bool = False,
        empty_distance: Optional[float] = None,
        use_spacing: bool = True,
        dice_smooth: float = 0.0,
        per_case_file: Optional[str] = None,
        output_dir: Optional[str] = None,
        format_only: bool = False,
        keep_results: bool = True,
        collect_device: str = 'cpu',
        prefix: Optional[str] = None,
        **kwargs,
    ) -> None:
        super().__init__(
            collect_device=collect_device, prefix=prefix, **kwargs
        )
        where = 'argument'
        self._given = dict(
            structures=None
            if structures is None
            else _check_structures(structures, where),
            mode=None if mode is None else _check_mode(mode, where),
            largest_cc=largest_cc,
            cc_connectivity=cc_connectivity,
            fill_holes=fill_holes,
        )
        if isinstance(metrics, str):
            metrics = [metrics]
        unknown = [m for m in metrics if m not in _KNOWN_METRICS]
        if unknown or not metrics:
            raise ValueError(
                f'DomainMetric: metrics must be a non-empty subset of '
                f'{_KNOWN_METRICS}, got {list(metrics)}'
            )
        if restrict_to_gt_slices and mode not in (None, '3d'):
            raise ValueError(
                "DomainMetric: restrict_to_gt_slices needs mode='3d'"
            )
        if empty_distance is not None and not _finite_non_negative(
            empty_distance
        ):
            raise ValueError(
                'DomainMetric: empty_distance must be None or a finite '
                f'number >= 0, got {empty_distance!r}'
            )
        if not _finite_non_negative(dice_smooth):
            raise ValueError(
                'DomainMetric: dice_smooth must be a finite number >= 0, '
                f'got {dice_smooth!r}'
            )
        self.dice_smooth = float(dice_smooth)
        self.metrics = list(metrics)
        self.restrict_to_gt_slices = restrict_to_gt_slices
        self.empty_distance = (
            None if empty_distance is None else float(empty_distance)
        )
        self.use_spacing = bool(use_spacing)
        self.per_case_file = per_case_file
        self.output_dir = output_dir
        self.format_only = bool(format_only)
        self.keep_results = bool(keep_results)
        if self.output_dir and is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
        self._settings = None
        if self.format_only:
            # Writes predictions only: no settings are needed.
            return
        if all(value is not None for value in self._given.values()):
            # Fully specified here: check the combination now.
            self._settings = self._resolve()

    # ------------------------------------------------------------------ #
    # settings: arguments first, then the dataset's metainfo
    # ------------------------------------------------------------------ #
    @BaseMetric.dataset_meta.setter
    def dataset_meta(self, dataset_meta: Optional[dict]) -> None:
        """Set the dataset's metainfo and resolve the settings from it.

        Resolving here, when the Runner builds its loops, reports a dataset
        without the metric's facts before any sample is tested.
        """
        self._dataset_meta = dataset_meta
        self._settings = None
        if dataset_meta is not None and not self.format_only:
            self._settings = self._resolve()

    def _lookup(self, name: str):
        """An argument, else its value in ``dataset_meta``; or an error."""
        if self._given[name] is not None:
            return self._given[name], 'argument'
        key, sub = _META_SOURCE[name]
        meta = self.dataset_meta or {}
        value = meta.get(key)
        if sub is not None and isinstance(value, dict):
            value = value.get(sub)
        where = f"dataset_meta['{key}']" + (
            '' if sub is None else f"['{sub}']"
        )
        if value is None:
            source = (
                'no dataset_meta was set'
                if self.dataset_meta is None
                else f'the dataset metainfo has no {where}'
            )
            raise KeyError(
                f'DomainMetric: {name} is not set: it is neither an argument '
                f'nor in the dataset metainfo ({source}). Declare {key!r} in '
                "the dataset class's METAINFO (or the dataset's metainfo "
                f'argument), or pass DomainMetric({name}=...) in '
                'val_evaluator / test_evaluator'
            )
        return value, where

    def _resolve(self) -> dict:
        """Structures, mode and post-processing, checked together."""
        structures, where = self._lookup('structures')
        structures = _check_structures(structures, where)
        mode, where = self._lookup('mode')
        mode = _check_mode(mode, where)
        post = {}
        for name, key in (
            ('largest_cc', 'largest_cc'),
            ('cc_connectivity', 'connectivity'),
            ('fill_holes', 'fill_holes'),
        ):
            post[key], _ = self._lookup(name)
        post = post_process_from_meta(
            post, mode, 'DomainMetric (arguments and dataset metainfo)'
        )
        if self.restrict_to_gt_slices and mode != '3d':
            raise ValueError(
                "DomainMetric: restrict_to_gt_slices needs mode='3d'"
            )
        return dict(structures=structures, mode=mode, post=PostProcess(**post))

    @property
    def settings(self) -> dict:
        """``structures``, ``mode`` and ``post`` (a :class:`PostProcess`)."""
        if self._settings is None:
            self._settings = self._resolve()
        return self._settings

    @property
    def structures(self) -> 'OrderedDict[str, list]':
        """Structure name -> labels, in report order."""
        return self.settings['structures']

    @property
    def mode(self) -> str:
        """``'2d'`` or ``'3d'``."""
        return self.settings['mode']

    @property
    def post_process(self) -> PostProcess:
        """The post-processing of every predicted structure."""
        return self.settings['post']

    # ------------------------------------------------------------------ #
    # process: runs on every rank, keeps compact per-sample results
    # ------------------------------------------------------------------ #
    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Evaluate 2D cases, or pack the masks of 3D slices.

        Args:
            data_batch (dict): A batch from the dataloader (unused).
            data_samples (Sequence[dict]): ``SegDataSample.to_dict()``
                outputs, with ``pred_sem_seg`` and ``gt_sem_seg`` (1, H, W)
                and the meta keys listed in the class docstring.
        """
        if self.format_only:
            for data_sample in data_samples:
                name = data_sample.get(
                    'case_id', data_sample.get('img_path', '<unknown>')
                )
                pred = label_map(data_sample, 'pred_sem_seg', name)
                item = dict(sample=sample_name(data_sample))
                if self.output_dir is not None:
                    item['out_file'] = self._write_prediction(
                        data_sample, pred
                    )
                self.results.append(item)
            return
        structures, mode = self.structures, self.mode
        for data_sample in data_samples:
            meta = read_sample_meta(data_sample, mode)
            pred = label_map(data_sample, 'pred_sem_seg', meta['case_id'])
            gt = label_map(data_sample, 'gt_sem_seg', meta['case_id'])
            if pred.shape != gt.shape:
                raise ValueError(
                    f'DomainMetric: sample {meta["case_id"]!r} has prediction '
                    f'shape {pred.shape} and ground truth shape {gt.shape}'
                )
            if self.output_dir is not None:
                meta['out_file'] = self._write_prediction(data_sample, pred)
                meta['sample'] = sample_name(data_sample)
            if mode == '2d':
                spacing = meta['spacing'] if self.use_spacing else None
                if spacing is not None:
                    spacing = spacing[:2]
                meta['values'] = self._case_values(
                    {s: np.isin(pred, lb) for s, lb in structures.items()},
                    {s: np.isin(gt, lb) for s, lb in structures.items()},
                    spacing,
                )
                meta['unit'] = 'px' if spacing is None else 'mm'
            else:
                meta['shape'] = pred.shape
                meta['pred'] = pack_masks(pred, structures)
                meta['gt'] = pack_masks(gt, structures)
            self.results.append(meta)

    def _write_prediction(self, data_sample: dict, pred: np.ndarray) -> str:
        """Write one predicted label map to ``output_dir``; its path."""
        path = osp.abspath(
            osp.join(self.output_dir, prediction_file_name(data_sample))
        )
        os.makedirs(osp.dirname(path), exist_ok=True)
        if data_sample.get('reduce_zero_label', False):
            pred = pred + 1
        Image.fromarray(pred.astype(np.uint8)).save(path)
        return path

    def _check_output_names(self, results: list) -> None:
        """Warn about PNGs of ``output_dir`` written by several samples."""
        if self.output_dir is None:
            return
        writers = defaultdict(set)
        for item in results:
            if 'out_file' in item:
                writers[item['out_file']].add(item['sample'])
        shared = {f: s for f, s in writers.items() if len(s) > 1}
        if shared:
            lines = [
                f'  {osp.basename(f)}: {sorted(s)}'
                for f, s in sorted(shared.items())[:10]
            ]
            print_log(
                f'DomainMetric: {len(shared)} prediction file(s) of '
                f'{self.output_dir} were written by more than one sample '
                '(files of one name in two folders); each holds the last '
                'prediction written:\n' + '\n'.join(lines),
                logger='current',
                level=logging.WARNING,
            )

    def _case_values(
        self,
        preds: Dict[str, np.ndarray],
        gts: Dict[str, np.ndarray],
        spacing: Optional[Sequence[float]],
    ) -> Dict[str, Dict[str, float]]:
        """Metrics of one case per structure (Dice in percent)."""
        wants_distance = any(m in DISTANCE_METRICS for m in self.metrics)
        values = OrderedDict()
        for name in self.structures:
            pred, gt = preds[name], gts[name]
            if self.restrict_to_gt_slices:
                pred = pred & gt.any(axis=(0, 1))[None, None, :]
            pred = self.post_process(pred)
            case = OrderedDict()
            if 'Dice' in self.metrics:
                case['Dice'] = 100.0 * dice(pred, gt, self.dice_smooth)
            if wants_distance:
                distances = surface_metrics(pred, gt, spacing)
                if self.empty_distance is not None and pred.any() != gt.any():
                    distances = dict.fromkeys(distances, self.empty_distance)
                for metric in self.metrics:
                    if metric in DISTANCE_METRICS:
                        case[metric] = distances[metric]
            values[name] = case
        return values

    # ------------------------------------------------------------------ #
    # compute_metrics: runs on the main process on the gathered results
    # ------------------------------------------------------------------ #
    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Per-case metrics, then per-domain and cross-domain means.

        Args:
            results (list): What :meth:`process` stored, from all ranks.

        Returns:
            dict[str, float]: ``'<domain>/<structure>_<metric>'``,
            ``'<domain>/n_cases'``, ``'<domain>/<structure>_n_excluded'``
            (cases without a defined distance), ``'<domain>/Dice_avg'`` (the
            mean of the structures' Dice, with two or more structures), and
            the same metric keys under ``'mean/'`` and, where any domain is
            unseen, ``'mean_unseen/'``. Nothing with ``format_only``.
        """
        if not results:
            raise ValueError('DomainMetric: no results to evaluate')
        self._check_output_names(results)
        if self.format_only:
            print_log(
                f'DomainMetric: {len(results)} predictions are saved to '
                f'{osp.abspath(self.output_dir)}'
                if self.output_dir
                else 'DomainMetric: format_only without an output_dir '
                'wrote nothing',
                logger='current',
            )
            return OrderedDict()
        if self.mode == '3d':
            cases = []
            for case, preds, gts in gather_volumes(results, self.structures):
                spacing = case['spacing'] if self.use_spacing else None
                case['unit'] = 'vox' if spacing is None else 'mm'
                case['values'] = self._case_values(preds, gts, spacing)
                cases.append(case)
        else:
            cases = list(results)
            check_unique_cases(cases)
        unit = case_unit(cases)
        structures = list(self.structures)
        out, summary, seen = summarize_domains(cases, structures, self.metrics)
        log_table(
            summary,
            seen,
            structures,
            self.metrics,
            unit,
            self.mode,
            self.empty_distance,
        )
        if self.per_case_file:
            write_cases_csv(
                self.per_case_file, cases, structures, self.metrics, unit
            )
        return out


def _finite_non_negative(value) -> bool:
    """A real number (not a bool) in [0, inf)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value < float('inf')
    )
