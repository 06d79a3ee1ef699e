"""One home per file fact: the fundus mask codec and NIfTI naming / I/O."""

import nibabel as nib
import numpy as np
import pytest

from mmseg_dfq.datasets.fundus_codec import (
    FUNDUS_GREY,
    decode_fundus_mask,
    encode_fundus_labels,
)
from mmseg_dfq.datasets.nifti import (
    file_stem,
    is_nifti,
    read_nifti_header,
    save_label_volume,
    split_nifti_ext,
)


def test_fundus_codec_round_trip():
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    grey = encode_fundus_labels(labels)
    assert grey.tolist() == [[255, 128, 0], [0, 128, 255]]
    assert FUNDUS_GREY.tolist() == [255, 128, 0]
    assert np.array_equal(decode_fundus_mask(grey), labels)
    with pytest.raises(ValueError, match='0 \\(background\\), 1'):
        encode_fundus_labels(np.array([3]))
    with pytest.raises(ValueError, match='integers'):
        encode_fundus_labels(np.array([0.5]))


def test_nifti_naming():
    assert split_nifti_ext('Case00.nii.gz') == ('Case00', '.nii.gz')
    assert split_nifti_ext('Case00.NII') == ('Case00', '.NII')
    assert split_nifti_ext('x.png') is None
    assert file_stem('a/Case00_segmentation.nii.gz') == 'Case00_segmentation'
    assert file_stem('a/b.c.png') == 'b.c'
    assert is_nifti('A.Nii.Gz') and not is_nifti('a.gz')


def test_labels_written_with_the_source_geometry(tmp_path):
    affine = np.diag([-0.5, -0.6, 3.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    src = tmp_path / 'Case00.nii.gz'
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), affine), src)
    labels = np.zeros((4, 5, 3), np.uint8)
    labels[1, 2, 1] = 1
    out = tmp_path / 'pred.nii.gz'
    save_label_volume(labels, str(src), str(out))
    shape, spacing, out_affine = read_nifti_header(str(out))
    assert shape == (4, 5, 3)
    assert spacing == pytest.approx((0.5, 0.6, 3.0))
    assert np.allclose(out_affine, affine)
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), labels)
    with pytest.raises(ValueError, match='does not match the source shape'):
        save_label_volume(labels[:, :, :2], str(src), str(out))
    with pytest.raises(FileNotFoundError, match='nope.nii'):
        read_nifti_header(str(tmp_path / 'nope.nii'))
