"""Dice and surface distances against medpy."""

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from mmseg_dfq.evaluation import (
    asd,
    assd,
    dice,
    hd95,
    surface_distances,
    surface_metrics,
)
from mmseg_dfq.evaluation.surface import (
    _MAX_LOCAL_OFFSETS,
    _local_offsets,
    _nearest_distances,
)

# medpy's directed distances (module-level name, not mangled).
medpy_surface_distances = getattr(medpy_binary, '__surface_distances')


def blob(rng, shape, sigma=2.0, level=0.53):
    """A random smooth binary mask with several blobs."""
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def assert_like_medpy(pred, gt, spacing=None, connectivity=1):
    assert dice(pred, gt) == pytest.approx(
        medpy_binary.dc(pred, gt), rel=1e-12
    )
    ours = surface_metrics(pred, gt, spacing, connectivity)
    ref = dict(
        ASD=medpy_binary.asd(pred, gt, spacing, connectivity),
        ASSD=medpy_binary.assd(pred, gt, spacing, connectivity),
        HD95=medpy_binary.hd95(pred, gt, spacing, connectivity),
    )
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert asd(pred, gt, spacing, connectivity) == ours['ASD']
    assert assd(pred, gt, spacing, connectivity) == ours['ASSD']
    assert hd95(pred, gt, spacing, connectivity) == ours['HD95']
    to_gt, to_pred = surface_distances(pred, gt, spacing, connectivity)
    np.testing.assert_allclose(
        to_gt, medpy_surface_distances(pred, gt, spacing, connectivity)
    )
    np.testing.assert_allclose(
        to_pred, medpy_surface_distances(gt, pred, spacing, connectivity)
    )


@pytest.mark.parametrize(
    'shape,spacing',
    [
        ((64, 72), None),
        ((64, 72), (0.7, 1.3)),
        ((40, 36, 10), None),
        ((40, 36, 10), (0.5, 0.6, 3.6)),
    ],
)
def test_random_blobs_match_medpy(shape, spacing):
    rng = np.random.default_rng(len(shape) + (spacing is None))
    for _ in range(4):
        # Blobs reach the array faces often at this density.
        pred, gt = blob(rng, shape), blob(rng, shape)
        assert pred.any() and gt.any()
        assert_like_medpy(pred, gt, spacing)


def test_small_disagreement_and_full_connectivity():
    rng = np.random.default_rng(3)
    gt = blob(rng, (48, 48, 12), sigma=3.0, level=0.5)
    pred = ndimage.binary_dilation(gt) & ~blob(rng, gt.shape, 1.0, 0.7)
    assert_like_medpy(pred, gt, (0.5, 0.5, 3.0), connectivity=1)
    assert_like_medpy(pred, gt, (0.5, 0.5, 3.0), connectivity=3)
    assert_like_medpy(pred[..., 5], gt[..., 5], None, connectivity=2)


def test_objects_touching_the_border():
    gt = np.zeros((30, 40), bool)
    gt[:12, :] = True  # touches three faces
    pred = np.zeros_like(gt)
    pred[:, 30:] = True  # touches three other faces
    pred[0, 0] = True
    assert_like_medpy(pred, gt)
    assert_like_medpy(pred, gt, (2.0, 0.5))
    full = np.ones((6, 7, 5), bool)
    part = full.copy()
    part[2:4, 2:5, 1:3] = False
    assert_like_medpy(full, part, (1.0, 1.0, 2.5))


def test_single_voxel_objects():
    pred = np.zeros((20, 25, 6), bool)
    gt = np.zeros_like(pred)
    pred[3, 4, 1] = True
    gt[15, 20, 5] = True
    assert_like_medpy(pred, gt, (0.5, 0.5, 3.0))
    # Same voxel: perfect overlap, zero distances.
    assert_like_medpy(pred, pred, (0.5, 0.5, 3.0))
    assert surface_metrics(pred, pred)['HD95'] == 0.0
    # Corner voxel against a single voxel at the opposite corner.
    pred2 = np.zeros((9, 9), bool)
    gt2 = np.zeros_like(pred2)
    pred2[0, 0] = gt2[-1, -1] = True
    assert_like_medpy(pred2, gt2)
    assert asd(pred2, gt2) == pytest.approx(np.hypot(8, 8))


def test_nested_and_disjoint_objects():
    yy, xx = np.mgrid[:50, :60]
    disk = (yy - 25) ** 2 + (xx - 30) ** 2
    outer, inner = disk < 400, disk < 64
    ring = outer & ~inner
    assert_like_medpy(inner, outer)  # nested
    assert_like_medpy(ring, outer, (0.8, 1.1))  # same outside, with a hole
    far = np.zeros_like(outer)
    far[:5, :5] = True
    assert_like_medpy(far | inner, outer)  # a disjoint extra object
    assert_like_medpy(far, inner)  # disjoint only
    assert dice(far, inner) == 0.0


def random_pair(rng):
    """A random 1D/2D/3D mask pair of one of several kinds."""
    ndim = int(rng.choice([1, 2, 2, 3, 3]))
    high = {1: 60, 2: 40, 3: 16}[ndim]
    shape = tuple(int(n) for n in rng.integers(4, high, size=ndim))
    sigma, level = rng.uniform(0.5, 3.0), rng.uniform(0.5, 0.6)
    pred, gt = blob(rng, shape, sigma, level), blob(rng, shape, sigma, level)
    kind = rng.integers(4)
    if kind == 1:  # a prediction a little larger: no shared border voxel
        gt = ndimage.binary_dilation(pred, iterations=int(rng.integers(1, 3)))
    elif kind == 2:  # stray single voxels, often at the array faces
        for _ in range(int(rng.integers(1, 4))):
            pred[tuple(int(rng.integers(n)) for n in shape)] = True
    elif kind == 3:  # a single-voxel ground truth
        gt = np.zeros(shape, bool)
        gt[tuple(int(rng.integers(n)) for n in shape)] = True
    return pred, gt


def test_many_random_cases_match_medpy():
    """Values equal medpy's bit for bit where the spacing makes every
    distance exact in floating point (none, integers, halves), and within
    one rounding (relative 1e-15) for any spacing: there a real tie between
    two nearest voxels may round differently in scipy's transform."""
    rng = np.random.default_rng(2024)
    num_exact = num_any = 0
    while num_exact + num_any < 300:
        pred, gt = random_pair(rng)
        if not (pred.any() and gt.any()):
            continue
        connectivity = int(rng.integers(1, pred.ndim + 1))
        exact = rng.random() < 0.5
        if exact:
            spacing = [None, 1.0, 2.0, 0.5][int(rng.integers(4))]
            if spacing is not None and rng.random() < 0.5:
                spacing = tuple(rng.choice([0.5, 1.0, 3.0], pred.ndim))
        else:
            spacing = tuple(np.round(rng.uniform(0.3, 4.0, pred.ndim), 2))
        ours = surface_distances(pred, gt, spacing, connectivity)
        ref = (
            medpy_surface_distances(pred, gt, spacing, connectivity),
            medpy_surface_distances(gt, pred, spacing, connectivity),
        )
        values = surface_metrics(pred, gt, spacing, connectivity)
        ref_values = dict(
            ASD=medpy_binary.asd(pred, gt, spacing, connectivity),
            ASSD=medpy_binary.assd(pred, gt, spacing, connectivity),
            HD95=medpy_binary.hd95(pred, gt, spacing, connectivity),
        )
        assert dice(pred, gt) == medpy_binary.dc(pred, gt)
        for got, want in zip(ours, ref):
            assert got.shape == want.shape
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
        for key, want in ref_values.items():
            if exact:
                assert values[key] == want, (key, spacing, connectivity)
            else:
                assert values[key] == pytest.approx(want, rel=1e-15, abs=0)
        num_exact += exact
        num_any += not exact
    assert num_exact > 100 and num_any > 100


def test_far_objects_match_medpy():
    # A prediction far from its ground truth (beyond the local search) and
    # a stray voxel in the far corner: the distances come from the trees or
    # the per-slice feature transforms.
    gt = np.zeros((40, 50, 12), bool)
    gt[5:12, 6:15, 2:5] = True
    pred = np.zeros_like(gt)
    pred[25:35, 30:45, 6:11] = True
    pred[-1, -1, -1] = True
    for spacing in (None, (0.5, 0.5, 3.6), (0.7, 1.3, 2.2)):
        assert_like_medpy(pred, gt, spacing)
        assert_like_medpy(pred, gt, spacing, connectivity=3)


@pytest.mark.parametrize(
    'num_src,extent,slices',
    [
        (2000, 40, [1, 2, 6]),  # feature transforms
        (20, 400, [1, 2, 6]),  # per-slice KD-trees
        (3000, 30, list(range(0, 30, 2))),  # transforms evicted and redone
    ],
)
def test_nearest_distances_match_brute_force(
    num_src, extent, slices, monkeypatch
):
    from scipy.spatial.distance import cdist

    from mmseg_dfq.evaluation import surface

    # A tiny memory budget: only 8 transforms kept at a time.
    monkeypatch.setattr(surface, '_TRANSFORM_CACHE_BYTES', 1)
    rng = np.random.default_rng(num_src)
    spacing = np.array([0.5, 0.6, 3.6])
    high = np.array([extent, extent, max(slices) + 3])
    src = rng.integers(0, high, size=(num_src, 3))
    # Targets on some slices only, so that some searches cross slices.
    tgt = rng.integers(0, high, size=(300, 3))
    tgt[:, 2] = rng.choice(slices, size=300)
    got = _nearest_distances(src, tgt, spacing)
    want = cdist(src * spacing, tgt * spacing).min(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


def test_local_search_offsets_are_whole_shells():
    # Every offset no longer than the last one searched must be in the
    # list, sorted by length: brute force over a large cube.
    for spacing in ((1.0, 1.0), (0.5, 0.5, 3.6), (0.7, 1.3, 2.2), (3.0,)):
        spacing = np.asarray(spacing)
        offsets, lengths, margin = _local_offsets(spacing)
        assert np.all(np.diff(lengths) >= 0)
        assert len(offsets) <= _MAX_LOCAL_OFFSETS
        half = 12
        grids = np.meshgrid(
            *[np.arange(-half, half + 1)] * spacing.size, indexing='ij'
        )
        cube = np.stack([g.ravel() for g in grids], 1)
        cube = cube[np.any(cube != 0, axis=1)]
        cube_len = np.sqrt(((cube * spacing) ** 2).sum(1))
        want = {tuple(v) for v in cube[cube_len <= lengths[-1] * 0.999999]}
        assert want <= {tuple(v) for v in offsets}
        assert all(
            np.abs(offsets[:, i]).max() <= m for i, m in enumerate(margin)
        )


def test_empty_masks_policy():
    empty = np.zeros((10, 12), bool)
    obj = empty.copy()
    obj[3:6, 4:9] = True
    assert dice(empty, empty) == 1.0
    assert surface_metrics(empty, empty) == dict(ASD=0.0, ASSD=0.0, HD95=0.0)
    for pred, gt in ((empty, obj), (obj, empty)):
        assert dice(pred, gt) == 0.0
        values = surface_metrics(pred, gt)
        assert all(np.isnan(v) for v in values.values())
        assert np.isnan(asd(pred, gt)) and np.isnan(hd95(pred, gt))
        assert all(d.size == 0 for d in surface_distances(pred, gt))
        # medpy refuses; our NaN is what lets the metric count the case.
        with pytest.raises(RuntimeError):
            medpy_binary.asd(pred, gt)


def test_bad_inputs_raise():
    a = np.zeros((4, 5), bool)
    with pytest.raises(ValueError, match='same shape'):
        dice(a, np.zeros((5, 4), bool))
    a[1, 1] = True
    with pytest.raises(ValueError, match='spacing has 3 values'):
        surface_metrics(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match='positive'):
        surface_metrics(a, a, spacing=(1.0, 0.0))
