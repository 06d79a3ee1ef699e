"""Benchmark our Dice / ASD / HD95 against medpy (and MONAI) for speed.

Builds realistic masks - ground truths shaped as smooth deformed ellipsoids
and predictions a few voxels off (shifted, one side grown and the other
shrunk, plus false positives) - in MRI volumes with 0.5 x 0.5 x 3.6 mm
voxels and in an 800 x 800 fundus image. The cases span what changes the
cost of a surface metric: organ size, how much of the volume the masks'
bounding box covers (stray voxels in two corners make it all of it) and
volume size. For each case it prints the largest difference to medpy's
values and the median time of medpy's ``dc`` + ``asd`` + ``hd95`` and of
our ``dice`` + ``surface_metrics``, timed alternately so that both see the
same machine load, then a Markdown table of all cases.

Example:
    python tools/benchmark_metrics.py --repeats 3
    python tools/benchmark_metrics.py --cases readme fundus
"""

import argparse
import statistics
import time
import warnings

import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from mmseg_dfq.evaluation import dice, surface_metrics

MRI_SPACING = (0.5, 0.5, 3.6)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Compare Dice/ASD/HD95 with medpy: values and speed'
    )
    parser.add_argument(
        '--repeats', type=int, default=3, help='timed runs per function'
    )
    parser.add_argument(
        '--cases',
        nargs='+',
        choices=list(CASES),
        default=list(CASES),
        help='cases to run (default: all)',
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


def add_false_positives(rng, pred, count, size):
    """``count`` cubes of ``size`` voxels per side anywhere in the volume."""
    pred = pred.copy()
    for _ in range(count):
        corner = [int(rng.integers(0, n - size + 1)) for n in pred.shape]
        pred[tuple(slice(c, c + size) for c in corner)] = True
    return pred


def readme_case(rng):
    # Prostate: ~45 x 40 x 36 mm gland in a 192 x 192 mm field of view.
    pred, gt = make_pair(rng, (384, 384, 30), (200, 180, 14), (45, 40, 5))
    return 'prostate 384x384x30 (the README case)', pred, gt, MRI_SPACING


def large_case(rng):
    # An organ covering ~1/6 of the volume (liver-, bladder-sized).
    pred, gt = make_pair(rng, (384, 384, 30), (192, 192, 15), (125, 115, 14))
    return 'large organ 384x384x30', pred, gt, MRI_SPACING


def stray_case(rng):
    pred, gt = make_pair(rng, (384, 384, 30), (192, 192, 15), (125, 115, 14))
    # Two false-positive voxels in opposite corners: the bounding box of
    # the masks becomes the whole volume.
    pred[0, 0, 0] = pred[-1, -1, -1] = True
    return (
        'large organ 384x384x30 + 2 stray corner voxels',
        pred,
        gt,
        (MRI_SPACING),
    )


def dilated_case(rng):
    _, gt = make_pair(rng, (384, 384, 30), (192, 192, 15), (125, 115, 14))
    # A prediction one voxel larger in every direction (26-neighbourhood):
    # no border voxel is shared, and on the organ's top and bottom the
    # nearest ground-truth border is a 3.6 mm slice away - the hardest
    # realistic case for the local search.
    pred = ndimage.binary_dilation(gt, ndimage.generate_binary_structure(3, 3))
    return (
        'large organ 384x384x30, prediction dilated by 1 voxel',
        pred,
        (gt),
        MRI_SPACING,
    )


def independent_case(rng):
    # A poor prediction: an organ of about the right size and place with
    # its own random border, so that most border voxels are millimetres
    # from the ground truth's (ASD ~3 mm) - the slowest case for us.
    gt = smooth_blob(rng, (384, 384, 30), (192, 192, 15), (125, 115, 14), 0.15)
    pred = smooth_blob(
        rng, (384, 384, 30), (195, 190, 15), (122, 118, 14), 0.15
    )
    return (
        'large organ 384x384x30, prediction drawn independently',
        pred,
        (gt),
        MRI_SPACING,
    )


def large_512_case(rng):
    pred, gt = make_pair(rng, (512, 512, 40), (256, 256, 20), (165, 150, 18))
    return 'large organ 512x512x40', pred, gt, MRI_SPACING


def scattered_case(rng):
    pred, gt = make_pair(rng, (512, 512, 80), (256, 240, 40), (90, 80, 25))
    # Scattered false positives: 300 single voxels and 30 small 3x3x3
    # clusters all over the volume.
    pred = add_false_positives(rng, pred, 300, 1)
    pred = add_false_positives(rng, pred, 30, 3)
    return (
        'organ 512x512x80 + 330 scattered false positives',
        pred,
        gt,
        (MRI_SPACING),
    )


def fundus_case(rng):
    # Fundus: optic disc of ~180 px diameter in an 800 x 800 crop.
    pred, gt = make_pair(rng, (800, 800), (400, 420), (90, 85))
    return 'fundus 800x800 (2D, pixels)', pred, gt, None


CASES = dict(
    readme=readme_case,
    large=large_case,
    stray=stray_case,
    dilated=dilated_case,
    independent=independent_case,
    large512=large_512_case,
    scattered=scattered_case,
    fundus=fundus_case,
)


def box_fraction(pred, gt):
    """Share of the volume covered by the bounding box of both masks."""
    union = pred | gt
    size = 1
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        size *= int(hits[-1] - hits[0] + 1)
    return size / union.size


def run_case(name, pred, gt, spacing, repeats, use_monai):
    shape = 'x'.join(map(str, pred.shape))
    box = box_fraction(pred, gt)
    print(
        f'\n== {name}: shape {shape}, spacing {spacing}, '
        f'foreground {gt.mean():.1%} of the volume, bounding box of both '
        f'masks {box:.0%}, |pred xor gt| = {(pred ^ gt).sum()}'
    )
    ref, got = medpy_all(pred, gt, spacing), ours_all(pred, gt, spacing)
    max_diff = 0.0
    for key in ref:
        diff = abs(ref[key] - got[key])
        max_diff = max(max_diff, diff)
        print(
            f'{key:5s} medpy {ref[key]:.6f}  ours {got[key]:.6f}  '
            f'abs diff {diff:.3g}'
        )
    if use_monai:
        try:
            mon = monai_all(pred, gt, spacing)
        except Exception as error:  # report, do not hide, a MONAI failure
            print(f'MONAI comparison failed: {error!r}')
        else:
            for key, value in mon.items():
                note = (
                    ' (MONAI HD95 is the max of the two directed 95th '
                    'percentiles, medpy pools them)'
                    if key == 'HD95'
                    else ''
                )
                print(
                    f'{key:5s} MONAI {value:.6f}  diff to medpy '
                    f'{abs(value - ref[key]):.3g}{note}'
                )
    # Alternate the two so that both see the same load on a shared machine.
    t_medpy, t_ours = [], []
    for _ in range(repeats):
        for times, fn in (
            (t_medpy, medpy_all),
            (t_ours, ours_all),
        ):
            start = time.perf_counter()
            fn(pred, gt, spacing)
            times.append(time.perf_counter() - start)
    t_medpy, t_ours = statistics.median(t_medpy), statistics.median(t_ours)
    print(
        f'median of {repeats}: Dice+ASD+HD95 medpy {t_medpy * 1e3:.1f} ms, '
        f'ours {t_ours * 1e3:.1f} ms, speed-up {t_medpy / t_ours:.1f}x'
    )
    return (
        f'| {name} | {box:.0%} | {t_medpy * 1e3:.0f} ms | '
        f'{t_ours * 1e3:.1f} ms | {t_medpy / t_ours:.1f}x | {max_diff:.2g} |'
    )


def main():
    args = parse_args()
    rows = []
    for key in args.cases:
        # One generator per case: a case looks the same whatever others
        # run; the large-organ variants share the large organ's.
        seed_key = 'large' if key in ('stray', 'dilated') else key
        rng = np.random.default_rng([args.seed, list(CASES).index(seed_key)])
        name, pred, gt, spacing = CASES[key](rng)
        use_monai = not args.no_monai and key in ('readme', 'fundus')
        rows.append(run_case(name, pred, gt, spacing, args.repeats, use_monai))
    print(
        f'\nDice + ASD + HD95 per case, median of {args.repeats} runs:\n'
        '| case | box / volume | medpy | mmseg-dfq | speed-up | '
        'max abs difference |\n| --- | --- | --- | --- | --- | --- |'
    )
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
