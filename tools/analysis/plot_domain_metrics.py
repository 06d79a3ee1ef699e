"""Per-domain bar chart from the metrics JSON of one or more test runs.

``python tools/analysis/plot_domain_metrics.py a.json [b.json ...]
--labels SegFormer DFQ --metric Dice ASD --out dice.png``

Reads the flat keys ``tools/test.py --metrics-json`` writes (the
``DomainMetric``'s ``Domain1/OD_Dice``, ``mean/OD_Dice``,
``mean_unseen/OC_ASD``...) and draws one panel per structure and metric
(rows: metrics, columns: structures) with one group of bars per domain
(then the means) and one bar per run. Missing values (``null``, e.g. a
distance to an empty mask) leave a gap.
"""

import argparse
import json
import os
import re
from collections import OrderedDict

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('metrics', nargs='+', help='metrics JSON files')
    parser.add_argument('--labels', nargs='+', help='one name per file')
    parser.add_argument(
        '--metric',
        nargs='+',
        default=['Dice'],
        help='one or more of Dice, ASD, HD95 (default: Dice)',
    )
    parser.add_argument('--out', default='domain_metrics.png')
    parser.add_argument('--dpi', type=int, default=100)
    args = parser.parse_args()
    if args.labels and len(args.labels) != len(args.metrics):
        parser.error(
            f'{len(args.labels)} labels for {len(args.metrics)} JSON files'
        )
    return args


def read_metrics(path, metric):
    """Read one metric of a metrics JSON.

    Args:
        path (str): JSON file of flat ``'<row>/<structure>_<metric>'`` keys.
        metric (str): E.g. 'Dice'.

    Returns:
        OrderedDict: ``{structure: {row: value}}``, NaN for ``null``.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(
            f'error: cannot read metrics JSON {path}: {err}'
        ) from None
    if not isinstance(data, dict):
        raise SystemExit(f'error: {path} holds no JSON object of metrics')
    pattern = re.compile(rf'^(?P<row>[^/]+)/(?P<s>.+)_{re.escape(metric)}$')
    table = OrderedDict()
    for key, value in data.items():
        match = pattern.match(key)
        if match:
            row = table.setdefault(match['s'], OrderedDict())
            row[match['row']] = np.nan if value is None else float(value)
    if not table:
        raise SystemExit(
            f'error: {path} holds no "<domain>/<structure>_{metric}" keys '
            '(is it a tools/test.py --metrics-json file?)'
        )
    return table


def main():
    args = parse_args()
    # The output's folder first: a bad path fails before the work.
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    labels = args.labels or [f'run {i + 1}' for i in range(len(args.metrics))]
    # runs[metric][i] = {structure: {row: value}} of file i.
    runs = {m: [read_metrics(p, m) for p in args.metrics] for m in args.metric}
    structures = list(runs[args.metric[0]][0])
    fig, axes = plt.subplots(
        len(args.metric),
        len(structures),
        figsize=(4.6 * len(structures), 3.2 * len(args.metric)),
        squeeze=False,
    )
    width = 0.8 / len(labels)
    for r, metric in enumerate(args.metric):
        for c, s in enumerate(structures):
            ax = axes[r][c]
            # Rows in the first file's order (domains, then the means).
            rows = list(runs[metric][0].get(s, {}))
            x = np.arange(len(rows))
            for i, (run, label) in enumerate(zip(runs[metric], labels)):
                values = [run.get(s, {}).get(row, np.nan) for row in rows]
                bars = ax.bar(
                    x + (i + 0.5) * width - 0.4, values, width, label=label
                )
                ax.bar_label(bars, fmt='%.1f', fontsize=6)
            ax.set_xticks(x, rows, rotation=30, ha='right', fontsize=8)
            ax.set_title(f'{s} {metric}', fontsize=10)
            if metric == 'Dice':
                ax.set_ylim(0, 105)
    if len(labels) > 1:
        # Above the panels: inside, it would hide bars near 100% Dice.
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles, names, loc='upper center', ncol=len(labels), fontsize=8
        )
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    else:
        fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f'written {args.out}')


if __name__ == '__main__':
    main()
