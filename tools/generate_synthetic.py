"""Write a small synthetic fundus or prostate set in the real on-disk layout.

Examples::

    python tools/generate_synthetic.py fundus --out data/fundus
    python tools/generate_synthetic.py prostate --out data/prostate --cases 4
"""

import argparse
import time

from mmseg_dfq.testing.synthetic import make_fundus, make_prostate


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=['fundus', 'prostate'])
    parser.add_argument('--out', required=True, help='data root to write')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--cases',
        type=int,
        default=None,
        help='images per domain (fundus, split 60/40 train/test; default '
        '10) or volumes per site (prostate; default 3)',
    )
    parser.add_argument(
        '--size',
        type=int,
        default=None,
        help='image size (fundus, default 96) or in-plane size (prostate, '
        'default 64) in pixels',
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
    make = make_fundus if args.dataset == 'fundus' else make_prostate
    start = time.perf_counter()
    summary = make(args.out, **kwargs)
    took = time.perf_counter() - start
    print(f'wrote synthetic {args.dataset} to {args.out} in {took:.1f} s:')
    for domain, count in summary.items():
        print(f'  {domain}: {count}')


if __name__ == '__main__':
    main()
