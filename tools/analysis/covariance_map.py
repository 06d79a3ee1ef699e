"""Channel-covariance heatmaps of the query features (the paper's figure).

``python tools/analysis/covariance_map.py CONFIG CKPT [--config2 CONFIG2
--ckpt2 CKPT2] --data-root DIR --out cov.png``

For each model: the features that feed the decoder's queries (the deepest
backbone/neck level by default) of images from every domain are instance-
normalised, their channel covariance |S| is averaged over the images and
drawn as a heatmap; the mean absolute off-diagonal value (channel
redundancy, lower is more decorrelated) is printed and shown in the title.
Give a baseline and DFQ to compare them side by side.
"""

import argparse
import os

import matplotlib

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from mmseg_dfq.apis import (  # noqa: E402
    build_analysis_dataset,
    domain_features,
    init_segmentor,
    mean_abs_covariance,
    off_diagonal_mean,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--config2', help='second model (e.g. the baseline)')
    parser.add_argument('--ckpt2', help='checkpoint of the second model')
    parser.add_argument('--labels', nargs='+', help='names of the models')
    parser.add_argument('--data-root', help='overrides the config data root')
    parser.add_argument(
        '--domains',
        nargs='+',
        help='domains to average over, by index or name (default: all)',
    )
    parser.add_argument(
        '--level',
        type=int,
        default=-1,
        help='level of extract_feat (default -1: the deepest, the queries)',
    )
    parser.add_argument(
        '--num-images', type=int, default=16, help='images per domain'
    )
    parser.add_argument(
        '--channels',
        type=int,
        default=64,
        help='draw the first N channels (all are used for the printed value)',
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='covariance.png')
    args = parser.parse_args()
    if bool(args.config2) != bool(args.ckpt2):
        parser.error('--config2 and --ckpt2 go together')
    return args


def _domains(values):
    """Domain indices stay ints, names stay strings; None for all."""
    if not values:
        return None
    return [int(v) if v.isdigit() else v for v in values]


def main():
    args = parse_args()
    # The output's folder first: a bad path fails before the work.
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    models = [(args.config, args.checkpoint)]
    if args.config2:
        models.append((args.config2, args.ckpt2))
    labels = args.labels or [f'model {i + 1}' for i in range(len(models))]
    if len(labels) != len(models):
        raise SystemExit(f'{len(labels)} labels for {len(models)} models')
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.2 * len(models), 4), squeeze=False
    )
    for ax, (config, ckpt), label in zip(axes[0], models, labels):
        model = init_segmentor(config, ckpt, device=args.device)
        dataset = build_analysis_dataset(
            model.cfg, args.data_root, _domains(args.domains)
        )
        feats = domain_features(model, dataset, args.level, args.num_images)
        cov = mean_abs_covariance([f for fs in feats.values() for f in fs])
        value = off_diagonal_mean(cov)
        print(
            f'{label}: mean |off-diagonal covariance| = {value:.4f} '
            f'({cov.shape[0]} channels, {sum(map(len, feats.values()))} '
            'images)'
        )
        n = min(args.channels, cov.shape[0])
        im = ax.imshow(cov[:n, :n], vmin=0, vmax=1, cmap='viridis')
        ax.set_title(f'{label}\nmean |off-diag| = {value:.3f}', fontsize=9)
        ax.set_xlabel('channel')
        if ax is axes[0][0]:
            ax.set_ylabel('channel')
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(args.out, dpi=100, bbox_inches='tight')
    print(f'written {args.out}')


if __name__ == '__main__':
    try:
        main()
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
