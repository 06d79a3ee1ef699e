"""Write a small synthetic data set in a real on-disk layout.

``fundus`` and ``prostate`` write the benchmarks' layouts; ``multisite``
writes the per-hospital folders of ``MultiSiteDataset`` (README, "Your own
multi-site data"): 2D images with 0/255 masks, or with ``--file-kind nifti``
volumes with their label volumes.

Examples::

    python tools/generate_synthetic.py fundus --out data/fundus
    python tools/generate_synthetic.py prostate --out data/prostate --cases 4
    python tools/generate_synthetic.py multisite --out demo_data/multisite
    python tools/generate_synthetic.py multisite --file-kind nifti \
        --out demo_data/multisite_nifti
"""

import argparse
import time

from mmseg_dfq.testing.synthetic import (
    make_fundus,
    make_multisite,
    make_prostate,
)


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=['fundus', 'prostate', 'multisite'])
    parser.add_argument('--out', required=True, help='data root to write')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--cases',
        type=int,
        default=None,
        help='images per domain (fundus, split 60/40 train/test; default '
        '10) or volumes per site (prostate; default 3); multisite: cases '
        'per hospital (default 6 images / 3 volumes)',
    )
    parser.add_argument(
        '--file-kind',
        choices=['image', 'nifti'],
        default='image',
        help='multisite only: 2D images or NIfTI volumes (default image)',
    )
    parser.add_argument(
        '--size',
        type=int,
        default=None,
        help='image size (fundus, default 96; multisite 64) or in-plane '
        'size (prostate, default 64; multisite 48) in pixels',
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Generate the requested set and print a summary."""
    args = parse_args(argv)
    kwargs = dict(seed=args.seed)
    if args.cases is not None:
        kwargs['cases'] = args.cases
    if args.size is not None:
        kwargs['size'] = args.size
    if args.dataset == 'multisite':
        kwargs['file_kind'] = args.file_kind
    elif args.file_kind != 'image':
        raise SystemExit('--file-kind applies to multisite only')
    make = dict(
        fundus=make_fundus, prostate=make_prostate, multisite=make_multisite
    )[args.dataset]
    start = time.perf_counter()
    summary = make(args.out, **kwargs)
    took = time.perf_counter() - start
    print(f'wrote synthetic {args.dataset} to {args.out} in {took:.1f} s:')
    for domain, count in summary.items():
        print(f'  {domain}: {count}')


if __name__ == '__main__':
    main()
