"""t-SNE of pooled features coloured by domain (the paper's alignment plot).

``python tools/analysis/tsne_features.py CONFIG CKPT --data-root DIR
--out tsne.png``

Global-average-pooled features of one level (default the deepest) for
images of every domain, embedded in 2D with scikit-learn's t-SNE. The
silhouette score of the domain labels in feature space is printed and shown
in the title: lower means the domains are less separable, i.e. the features
are more domain-invariant.
"""

import argparse
import os

import matplotlib
import numpy as np

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

from mmseg_dfq.apis import (  # noqa: E402
    build_analysis_dataset,
    domain_features,
    init_segmentor,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--data-root', help='overrides the config data root')
    parser.add_argument(
        '--domains',
        nargs='+',
        help='domains to embed, by index or name (default: all)',
    )
    parser.add_argument(
        '--level',
        type=int,
        default=-1,
        help='level of extract_feat (default -1: the deepest)',
    )
    parser.add_argument(
        '--num-images',
        type=int,
        default=32,
        help='images (prostate: slices) per domain (default: 32)',
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--title', default='')
    parser.add_argument('--out', default='tsne.png')
    return parser.parse_args()


def main():
    args = parse_args()
    # The output's folder first: a bad path fails before the work.
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model = init_segmentor(args.config, args.checkpoint, device=args.device)
    domains = args.domains and [
        int(d) if d.isdigit() else d for d in args.domains
    ]
    dataset = build_analysis_dataset(model.cfg, args.data_root, domains)
    feats = domain_features(model, dataset, args.level, args.num_images)
    names = sorted(feats)
    x = np.stack([f.mean(dim=(1, 2)).numpy() for d in names for f in feats[d]])
    y = np.array([i for i, d in enumerate(names) for _ in feats[d]])
    if len(names) < 2 or len(x) <= len(names):
        # The silhouette needs two domains and one domain with two images.
        raise SystemExit(
            f'error: t-SNE by domain needs at least two domains and more '
            f'images than domains; got {len(x)} image(s) of {len(names)} '
            'domain(s)'
        )
    score = float(silhouette_score(x, y))
    emb = TSNE(
        n_components=2,
        perplexity=min(30.0, len(x) - 1.0),
        init='pca',
        random_state=args.seed,
    ).fit_transform(x)
    print(
        f'domain silhouette in feature space: {score:.3f} '
        f'({len(x)} images, {len(names)} domains)'
    )
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for i, d in enumerate(names):
        ax.scatter(*emb[y == i].T, s=12, label=d)
    ax.legend(fontsize=8, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f'{args.title}\ndomain silhouette {score:.2f}'.strip(), fontsize=9
    )
    fig.savefig(args.out, dpi=100, bbox_inches='tight')
    print(f'written {args.out}')


if __name__ == '__main__':
    try:
        main()
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
