"""What to segment: a folder's other files are named, never passed over in
silence; a NIfTI volume is checked as the data sets check it."""

import gzip
import os
import struct

import nibabel as nib
import numpy as np
import pytest

import mmseg_dfq.apis.inputs as inputs_module
from mmseg_dfq.apis import find_inputs, nifti_slices


@pytest.fixture
def logged(monkeypatch):
    """The warnings find_inputs logs."""
    messages = []
    monkeypatch.setattr(
        inputs_module, 'print_log', lambda msg, **kw: messages.append(msg)
    )
    return messages


def test_folder_names_what_it_does_not_segment(tmp_path, logged):
    for name in ('a.png', 'b.JPG', 'c.nii.gz', 'c_segmentation.nii.gz'):
        (tmp_path / name).write_bytes(b'')
    files, skipped = find_inputs(str(tmp_path))
    assert [os.path.basename(f) for f in files] == [
        'a.png',
        'b.JPG',
        'c.nii.gz',
    ]
    assert [os.path.basename(f) for f in skipped] == ['c_segmentation.nii.gz']
    assert logged == []

    (tmp_path / 'notes.txt').write_text('x')
    (tmp_path / 'd.webp').write_bytes(b'RIFF')
    (tmp_path / 'sub').mkdir()
    files, _ = find_inputs(str(tmp_path))
    assert len(files) == 3
    (msg,) = logged
    assert str(tmp_path) in msg and '3 other file(s) / folder(s)' in msg
    for name in ('d.webp', 'notes.txt', 'sub' + os.sep):
        assert name in msg


def test_folder_with_nothing_to_segment_names_its_files(tmp_path, logged):
    for i in range(7):
        (tmp_path / f'n{i}.txt').write_text('x')
    with pytest.raises(ValueError, match='no image') as err:
        find_inputs(str(tmp_path))
    assert 'n0.txt' in str(err.value) and 'and 2 more' in str(err.value)
    with pytest.raises(ValueError, match='unsupported file type'):
        find_inputs(str(tmp_path / 'n0.txt'))


def test_nifti_slices_refuses_a_bad_voxel_size(tmp_path):
    path = str(tmp_path / 'vol.nii.gz')
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 3.0, 1.0])), path)
    assert len(nifti_slices(path)) == 4
    # pixdim[3] = 0 in the stored bytes (nibabel would read it as 1).
    with gzip.open(path, 'rb') as f:
        raw = bytearray(f.read())
    raw[88:92] = struct.pack('<f', 0.0)
    with gzip.open(path, 'wb') as f:
        f.write(bytes(raw))
    assert nib.load(path).header.get_zooms()[2] == 1.0
    with pytest.raises(ValueError, match='voxel size') as err:
        nifti_slices(path)
    assert path in str(err.value)
