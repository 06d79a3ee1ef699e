"""Benchmark our Dice / ASD / HD95 against medpy (and MONAI) for speed.

Builds realistic masks (a smooth prostate-like blob in a 384 x 384 x 30 MRI
volume with 0.5 x 0.5 x 3.6 mm voxels, and an 800 x 800 optic disc image),
a prediction that disagrees with the ground truth by a few voxels, then
prints the largest difference to medpy's values and the median time of
each implementation.

Example:
    python tools/benchmark_metrics.py --repeats 5
"""

import argparse
import statistics
import time
import warnings

import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from mmseg_dfq.evaluation import asd, dice, hd95, surface_metrics


def parse_args():
    parser = argparse.ArgumentParser(
        description='Compare Dice/ASD/HD95 with medpy: values and speed'
    )
    parser.add_argument(
        '--repeats', type=int, default=5, help='timed runs per function'
    )
    parser.add_argument(
        '--no-monai', action='store_true', help='skip the MONAI comparison'
    )
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def smooth_blob(rng, shape, center, radii, roughness):
    """A deformed ellipsoid (radii in voxels) with a smooth random border."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    noise = ndimage.gaussian_filter(
        rng.normal(0, 1, shape), [max(r / 3, 1) for r in radii]
    )
    noise *= roughness / noise.std()
    return dist + noise < 1.0


def make_pair(rng, shape, center, radii):
    """Ground truth and a prediction a few voxels off (shift, dilation)."""
    gt = smooth_blob(rng, shape, center, radii, 0.15)
    # Shift by one voxel in-plane, grow one side and shrink the other, in
    # plane only (a 3.6 mm slice is a lot of prostate to lose).
    pred = np.roll(gt, (1, -1) + (0,) * (gt.ndim - 2), axis=range(gt.ndim))
    in_plane = ndimage.generate_binary_structure(2, 1)
    in_plane = in_plane.reshape(in_plane.shape + (1,) * (gt.ndim - 2))
    side = np.zeros(shape, bool)
    side[: int(center[0])] = True
    pred = np.where(
        side,
        ndimage.binary_dilation(pred, in_plane, iterations=2),
        ndimage.binary_erosion(pred, in_plane),
    )
    # A small false positive away from the organ, as real models make.
    spot = tuple(
        slice(int(c + 1.6 * r), int(c + 1.6 * r) + 3)
        for c, r in zip(center, radii)
    )
    pred[spot] = True
    return pred, gt


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def medpy_all(pred, gt, spacing):
    """What a medpy-based evaluation calls per case."""
    return dict(
        Dice=medpy_binary.dc(pred, gt),
        ASD=medpy_binary.asd(pred, gt, spacing),
        HD95=medpy_binary.hd95(pred, gt, spacing),
    )


def ours_all(pred, gt, spacing):
    values = surface_metrics(pred, gt, spacing)
    return dict(Dice=dice(pred, gt), ASD=values['ASD'], HD95=values['HD95'])


def monai_all(pred, gt, spacing):
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
    )

    # MONAI wants one-hot (B, C, *spatial); channel 0 is background.
    def one_hot(mask):
        mask = torch.from_numpy(mask)
        return torch.stack([~mask, mask])[None].float()

    p, g = one_hot(pred), one_hot(gt)
    with warnings.catch_warnings():
        # MONAI 1.x warns about a deprecated argument of its own helpers.
        warnings.simplefilter('ignore')
        return dict(
            ASD=float(compute_average_surface_distance(p, g, spacing=spacing)),
            HD95=float(
                compute_hausdorff_distance(
                    p, g, percentile=95, spacing=spacing
                )
            ),
        )


def run_case(name, pred, gt, spacing, repeats, use_monai):
    print(
        f'\n== {name}: shape {pred.shape}, spacing {spacing}, '
        f'|gt| = {gt.sum()}, |pred| = {pred.sum()}, '
        f'|pred xor gt| = {(pred ^ gt).sum()}'
    )
    ref, got = medpy_all(pred, gt, spacing), ours_all(pred, gt, spacing)
    for key in ref:
        print(
            f'{key:5s} medpy {ref[key]:.6f}  ours {got[key]:.6f}  '
            f'max abs diff {abs(ref[key] - got[key]):.3g}'
        )
    if use_monai:
        try:
            mon = monai_all(pred, gt, spacing)
        except Exception as error:  # report, do not hide, a MONAI failure
            print(f'MONAI comparison failed: {error!r}')
            use_monai = False
        else:
            for key, value in mon.items():
                print(
                    f'{key:5s} MONAI {value:.6f}  (diff to medpy '
                    f'{abs(value - ref[key]):.3g}; MONAI HD95 is the max of '
                    'the two directed 95th percentiles, medpy pools them)'
                    if key == 'HD95'
                    else f'{key:5s} MONAI {value:.6f}  (diff to medpy '
                    f'{abs(value - ref[key]):.3g})'
                )
    rows = [
        (
            'Dice+ASD+HD95',
            lambda: medpy_all(pred, gt, spacing),
            lambda: ours_all(pred, gt, spacing),
        ),
        (
            'ASD',
            lambda: medpy_binary.asd(pred, gt, spacing),
            lambda: asd(pred, gt, spacing),
        ),
        (
            'HD95',
            lambda: medpy_binary.hd95(pred, gt, spacing),
            lambda: hd95(pred, gt, spacing),
        ),
    ]
    print(f'median of {repeats} runs:')
    for label, medpy_fn, ours_fn in rows:
        t_medpy = median_time(medpy_fn, repeats)
        t_ours = median_time(ours_fn, repeats)
        print(
            f'  {label:14s} medpy {t_medpy * 1e3:8.1f} ms  ours '
            f'{t_ours * 1e3:7.1f} ms  speedup {t_medpy / t_ours:6.1f}x'
        )
    if use_monai:
        t_monai = median_time(lambda: monai_all(pred, gt, spacing), repeats)
        print(f'  {"ASD+HD95":14s} MONAI {t_monai * 1e3:8.1f} ms')


def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    # Prostate: ~45 x 40 x 36 mm gland in a 192 x 192 mm field of view.
    pred, gt = make_pair(rng, (384, 384, 30), (200, 180, 14), (45, 40, 5))
    run_case(
        'prostate MRI volume (3D)',
        pred,
        gt,
        (0.5, 0.5, 3.6),
        args.repeats,
        not args.no_monai,
    )
    # Fundus: optic disc of ~180 px diameter in an 800 x 800 crop.
    pred, gt = make_pair(rng, (800, 800), (400, 420), (90, 85))
    run_case(
        'fundus image (2D)',
        pred,
        gt,
        None,
        args.repeats,
        not args.no_monai,
    )


if __name__ == '__main__':
    main()
