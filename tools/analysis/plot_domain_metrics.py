"""Per-domain bar chart from the metrics JSON of one or more test runs.

``python tools/analysis/plot_domain_metrics.py a.json [b.json ...]
--labels SegFormer DFQ --metric Dice --out dice.png``

Reads the flat keys ``tools/test.py`` writes (``Domain1/OD_Dice``,
``mean_unseen/OC_Dice``...) and draws, for every structure, one group of
bars per domain (plus the means) and one bar per run.
"""

import argparse
import json
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
        '--metric', default='Dice', help='Dice, ASD or HD95 (default Dice)'
    )
    parser.add_argument('--out', default='domain_metrics.png')
    return parser.parse_args()


def read_metrics(path, metric):
    """{structure: {row: value}} for one metric of one JSON file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f'cannot read metrics JSON {path!r}: {err}') from err
    pattern = re.compile(rf'^(?P<row>[^/]+)/(?P<s>.+)_{metric}$')
    table = OrderedDict()
    for key, value in data.items():
        match = pattern.match(key)
        if match:
            row = table.setdefault(match['s'], OrderedDict())
            row[match['row']] = np.nan if value is None else float(value)
    if not table:
        raise SystemExit(
            f'{path!r} holds no "<domain>/<structure>_{metric}"'
            ' keys (is it a tools/test.py metrics JSON?)'
        )
    return table


def main():
    args = parse_args()
    labels = args.labels or [f'run {i + 1}' for i in range(len(args.metrics))]
    if len(labels) != len(args.metrics):
        raise SystemExit(f'{len(labels)} labels for {len(args.metrics)} files')
    runs = [read_metrics(p, args.metric) for p in args.metrics]
    structures = list(runs[0])
    fig, axes = plt.subplots(
        1, len(structures), figsize=(5 * len(structures), 3.6), squeeze=False
    )
    width = 0.8 / len(runs)
    for ax, s in zip(axes[0], structures):
        rows = list(runs[0][s])
        x = np.arange(len(rows))
        for i, (run, label) in enumerate(zip(runs, labels)):
            values = [run.get(s, {}).get(r, np.nan) for r in rows]
            bars = ax.bar(
                x + i * width - 0.4 + width / 2, values, width, label=label
            )
            ax.bar_label(bars, fmt='%.1f', fontsize=6)
        ax.set_xticks(x, rows, rotation=30, ha='right', fontsize=8)
        ax.set_title(f'{s} {args.metric}', fontsize=10)
        if args.metric == 'Dice':
            ax.set_ylim(0, 105)
    axes[0][0].legend(fontsize=8)
    fig.savefig(args.out, dpi=100, bbox_inches='tight')
    print(f'written {args.out}')


if __name__ == '__main__':
    main()
