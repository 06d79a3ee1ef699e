"""From per-case metrics to per-domain means, the log table and the CSV."""

import csv
import math
import os
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.logging import print_log
from prettytable import PrettyTable

DISTANCE_METRICS = ('ASD', 'ASSD', 'HD95')
_UNIT_TEXT = {
    'mm': 'mm (from the spacing meta key)',
    'px': 'pixels',
    'vox': 'voxels',
}


def _nanmean(values) -> float:
    values = np.asarray(values, float)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def case_unit(cases: List[dict]) -> str:
    """The one distance unit of all cases (``'mm'``, ``'px'`` or ``'vox'``).

    Raises:
        ValueError: When some cases have a spacing and others do not.
    """
    units = sorted({case['unit'] for case in cases})
    if len(units) > 1:
        raise ValueError(
            'DomainMetric: some cases have a spacing and others do not '
            f'(units {units}); distances would mix mm and pixels'
        )
    return units[0]


def summarize_domains(
    cases: List[dict], structures: Sequence[str], metrics: Sequence[str]
) -> Tuple[Dict[str, float], 'OrderedDict[str, dict]', Dict[str, bool]]:
    """Per-domain means of the per-case metrics, then means over domains.

    Args:
        cases (list[dict]): One dict per case with ``domain``,
            ``domain_idx``, ``seen`` and ``values[structure][metric]``.
        structures (Sequence[str]): Structure names, in report order.
        metrics (Sequence[str]): Metric names, in report order.

    Returns:
        tuple: ``(out, summary, seen)``: the flat metric dict the
        evaluator returns (``'<domain>/<S>_<M>'``, ``'<domain>/n_cases'``,
        ``'<domain>/<S>_n_excluded'``, ``'<domain>/Dice_avg'`` (the mean of
        the structures' Dice, with two or more), ``'mean/...'`` over all
        domains and, where any domain is unseen, ``'mean_unseen/...'`` over
        the unseen ones), the rows of the table and whether each domain is
        seen.
    """
    by_domain = defaultdict(list)
    for case in cases:
        by_domain[case['domain']].append(case)
    domains = sorted(
        by_domain, key=lambda d: (by_domain[d][0]['domain_idx'], d)
    )
    seen = {}
    for domain in domains:
        flags = {case['seen'] for case in by_domain[domain]}
        if len(flags) > 1:
            raise ValueError(
                f'DomainMetric: domain {domain!r} has both seen and '
                'unseen samples'
            )
        seen[domain] = flags.pop()

    columns = [f'{s}_{m}' for s in structures for m in metrics]
    # A case without a defined distance is left out of every distance mean
    # alike, so one count per structure says how many.
    dist_metric = next((m for m in metrics if m in DISTANCE_METRICS), None)
    out = OrderedDict()
    summary = OrderedDict()
    for domain in domains:
        rows = by_domain[domain]
        row = OrderedDict(n_cases=len(rows))
        for s in structures:
            for m in metrics:
                row[f'{s}_{m}'] = _nanmean([c['values'][s][m] for c in rows])
            if dist_metric is not None:
                row[f'{s}_n_excluded'] = int(
                    sum(math.isnan(c['values'][s][dist_metric]) for c in rows)
                )
        summary[domain] = row
        for key, value in row.items():
            out[f'{domain}/{key}'] = value
        _add_mean_dice(out, domain, row, structures, metrics)

    # mean_unseen whenever a held-out domain is evaluated, also alone (the
    # default validation set): one key for the domain-generalization number
    # whatever else is evaluated, e.g. for CheckpointHook's save_best.
    groups = [('mean', domains)]
    unseen = [d for d in domains if not seen[d]]
    if unseen:
        groups.append(('mean_unseen', unseen))
    for group, members in groups:
        row = OrderedDict(n_cases=sum(summary[d]['n_cases'] for d in members))
        for key in columns:
            row[key] = _nanmean([summary[d][key] for d in members])
            out[f'{group}/{key}'] = row[key]
        summary[group] = row
        _add_mean_dice(out, group, row, structures, metrics)
    return out, summary, seen


def _add_mean_dice(out, prefix, row, structures, metrics) -> None:
    """``<prefix>/Dice_avg``: the mean of the structures' Dice (2 or more).

    Not ``IoUMetric``'s mDice (pixels pooled over the data set, background
    included): each structure's per-case Dice mean, averaged.

    One number per domain for model selection, e.g. the DFQ authors' fundus
    validation score, (OC Dice + OD Dice) / 2.
    """
    if 'Dice' in metrics and len(structures) > 1:
        out[f'{prefix}/Dice_avg'] = _nanmean(
            [row[f'{s}_Dice'] for s in structures]
        )


def log_table(
    summary: dict,
    seen: Dict[str, bool],
    structures: Sequence[str],
    metrics: Sequence[str],
    unit: str,
    mode: str,
    empty_distance: Optional[float] = None,
) -> None:
    """Print the per-domain table to the current logger.

    ``empty_distance``: the distance given to cases with exactly one empty
    mask (None: they are left out, the "excl." column). A mean without any
    defined value (every case excluded) prints as ``n/a``; the metric dict
    holds NaN there.
    """
    has_distance = any(m in DISTANCE_METRICS for m in metrics)
    table = PrettyTable()
    header = ['Domain', 'n']
    for s in structures:
        for m in metrics:
            header.append(f'{s} {m} ({"%" if m == "Dice" else unit})')
        if has_distance and empty_distance is None:
            header.append(f'{s} excl.')
    table.field_names = header
    for name, row in summary.items():
        if name == 'mean_unseen' and not any(seen.values()):
            # Every domain is unseen: the row would repeat 'mean'.
            continue
        if name in seen:
            label = f'{name} ({"seen" if seen[name] else "unseen"})'
        else:
            label = name
        cells = [label, row['n_cases']]
        for s in structures:
            for m in metrics:
                value = row[f'{s}_{m}']
                # No case with a defined value (all excluded): n/a, as the
                # sweep tables write it.
                cells.append('n/a' if math.isnan(value) else f'{value:.2f}')
            if has_distance and empty_distance is None:
                cells.append(row.get(f'{s}_n_excluded', ''))
        table.add_row(cells)
    if empty_distance is None:
        empty = (
            '"excl." = cases with exactly one empty mask, left out of the '
            'distance means'
        )
    else:
        empty = (
            f'cases with exactly one empty mask have distance '
            f'{empty_distance:g}'
        )
    print_log(
        f'DomainMetric ({mode}, per-case means; distances in '
        f'{_UNIT_TEXT[unit]}; {empty}):\n' + table.get_string(),
        logger='current',
    )


def write_cases_csv(
    path: str,
    cases: List[dict],
    structures: Sequence[str],
    metrics: Sequence[str],
    unit: str,
) -> None:
    """Write one CSV row per case.

    Columns: ``domain``, ``domain_idx``, ``seen``, ``case_id``, then
    ``slice_index`` only when the cases are slices (a ``'2d'`` evaluation
    of volume slices: ``case_id`` names the volume, so the slice is part of
    the case's name; fundus images and ``'3d'`` volumes have none), each
    ``<structure>_<metric>`` and ``distance_unit``.
    """
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    columns = [f'{s}_{m}' for s in structures for m in metrics]
    with_slice = any('slice_index' in case for case in cases)
    ident = ['domain', 'domain_idx', 'seen', 'case_id']
    if with_slice:
        ident.append('slice_index')
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(ident + columns + ['distance_unit'])
        for case in cases:
            values = [
                case['values'][s][m] for s in structures for m in metrics
            ]
            writer.writerow(
                [case.get(key, '') for key in ident]
                + [f'{v:.6g}' for v in values]
                + [unit]
            )
    print_log(
        f'DomainMetric: per-case results written to {path}',
        logger='current',
    )
