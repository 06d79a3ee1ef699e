"""Largest component, hole filling and the dataset's post_process facts."""

import numpy as np
import pytest
from scipy import ndimage

from mmseg_dfq.evaluation import (
    PostProcess,
    fill_holes,
    largest_connected_component,
    post_process_from_meta,
    postprocess_connectivity,
)


def blob(rng, shape, sigma=2.0, level=0.53):
    """A random smooth binary mask with several blobs."""
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def reference_lcc(mask, structure=None):
    labels, num = ndimage.label(mask, structure=structure)
    if num == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (np.argmax(sizes) + 1)


@pytest.mark.parametrize('shape', [(64, 70), (30, 32, 8)])
def test_largest_connected_component_matches_scipy(shape):
    rng = np.random.default_rng(7)
    for level in (0.5, 0.55, 0.6):
        mask = blob(rng, shape, sigma=1.5, level=level)
        np.testing.assert_array_equal(
            largest_connected_component(mask), reference_lcc(mask)
        )
        full = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
        np.testing.assert_array_equal(
            largest_connected_component(mask, connectivity=mask.ndim),
            reference_lcc(mask, full),
        )
    assert not largest_connected_component(np.zeros(shape)).any()


def test_largest_connected_component_face_connectivity():
    # Two diagonal-touching squares: separate with faces, one with corners.
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = True
    mask[4:6, 4:6] = True
    np.testing.assert_array_equal(
        largest_connected_component(mask), mask & (np.arange(8) < 4)[:, None]
    )
    np.testing.assert_array_equal(
        largest_connected_component(mask, connectivity=2), mask
    )


@pytest.mark.parametrize('shape', [(64, 70), (24, 26, 6)])
def test_fill_holes_matches_scipy(shape):
    rng = np.random.default_rng(11)
    for level in (0.45, 0.5):
        mask = blob(rng, shape, sigma=1.2, level=level)
        np.testing.assert_array_equal(
            fill_holes(mask), ndimage.binary_fill_holes(mask)
        )
    # A ring touching the border: its hole is still a hole.
    ring = np.ones((7, 7), bool)
    ring[2:4, 3] = False
    ring[0, :] = False
    np.testing.assert_array_equal(
        fill_holes(ring), ndimage.binary_fill_holes(ring)
    )
    assert fill_holes(ring)[2, 3]


def test_post_process_in_3d_keeps_one_volume_and_fills_per_slice():
    vol = np.zeros((12, 12, 3), bool)
    vol[2:9, 2:9, :] = True
    vol[4:6, 4:6, :] = False  # a tunnel along the slice axis
    vol[11, 11, 0] = True  # stray voxel
    keep = PostProcess(largest_cc=True, connectivity=1, fill_holes=False)
    expected = vol.copy()
    expected[11, 11, 0] = False
    np.testing.assert_array_equal(keep(vol), expected)
    both = PostProcess(largest_cc=True, connectivity=1, fill_holes=True)
    expected[4:6, 4:6, :] = True
    np.testing.assert_array_equal(both(vol), expected)
    # In 3D the tunnel reaches the border: not a hole.
    assert not ndimage.binary_fill_holes(vol)[4, 4, 1]
    nothing = PostProcess(largest_cc=False, connectivity=1, fill_holes=False)
    np.testing.assert_array_equal(nothing(vol), vol)


def test_post_process_from_meta_checks_the_dataset_facts():
    fundus = dict(largest_cc=True, fill_holes=True, connectivity=2)
    assert post_process_from_meta(fundus, '2d', 'X') == fundus
    prostate = dict(largest_cc=True, fill_holes=False, connectivity=1)
    assert post_process_from_meta(prostate, '3d', 'X') == prostate
    with pytest.raises(
        ValueError, match=r"Fundus.*missing \['connectivity'\]"
    ):
        post_process_from_meta(
            dict(largest_cc=True, fill_holes=True), '2d', 'Fundus'
        )
    with pytest.raises(ValueError, match=r"unknown \['holes'\]"):
        post_process_from_meta(dict(fundus, holes=1), '2d', 'X')
    with pytest.raises(ValueError, match='fill_holes'):
        post_process_from_meta(dict(fundus, fill_holes='yes'), '2d', 'X')
    # 0 / 1 are accepted as switches (a config may write them so).
    assert post_process_from_meta(
        dict(fundus, largest_cc=1, fill_holes=0), '2d', 'X'
    ) == dict(fundus, fill_holes=False)
    with pytest.raises(ValueError, match='largest_cc'):
        post_process_from_meta(dict(fundus, largest_cc=2), '2d', 'X')
    with pytest.raises(ValueError, match="1..2 in '2d'"):
        post_process_from_meta(dict(fundus, connectivity=3), '2d', 'X')
    with pytest.raises(ValueError, match='must be a dict'):
        post_process_from_meta(True, '2d', 'X')
    # Without a dataset fact: the authors' connectivity per mode.
    assert postprocess_connectivity('2d') == 2
    assert postprocess_connectivity('3d') == 1
    with pytest.raises(ValueError, match='mode'):
        postprocess_connectivity('volume')
