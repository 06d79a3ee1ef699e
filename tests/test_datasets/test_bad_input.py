"""Bad input is an error naming the file, never passed over in silence:
NIfTI voxel sizes, damaged JPEGs, 16-bit and transparent images, files a
domain folder holds that its layout does not read."""

import gzip
import os
import struct

import cv2
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mmseg_dfq.datasets import MultiSiteDataset, ProstateDGDataset, nifti
from mmseg_dfq.datasets import base as base_module
from mmseg_dfq.datasets.base import (
    pair_case_files,
    split_image_ext,
)
from mmseg_dfq.datasets.nifti import read_nifti_header, split_nifti_ext
from mmseg_dfq.datasets.transforms import (
    LoadFundusImageFromFile,
    loading,
    read_grey_mask,
    read_image_as_stored,
)
from mmseg_dfq.testing.synthetic import MULTISITE_SITES, make_multisite

from ..helpers import load_base_config

# --------------------------------------------------------------- NIfTI


def write_volume(path, spacing=(0.5, 0.6, 3.0), shape=(6, 5, 4), seg=False):
    """A small NIfTI-1 volume whose affine (and so pixdim) holds spacing."""
    rng = np.random.RandomState(0)
    if seg:
        data = (rng.rand(*shape) > 0.5).astype(np.uint8)
    else:
        data = rng.randint(0, 500, shape).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def set_raw_pixdim(path, sizes):
    """Write ``pixdim[1:]`` into the stored header bytes.

    nibabel fixes a 0 or negative pixdim when it writes a header as well as
    when it reads one, so the bytes are patched past it (pixdim is float32
    [8] at byte 76 of a NIfTI-1 header).
    """
    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = bytearray(f.read())
    endian = '<' if struct.unpack('<i', raw[:4])[0] == 348 else '>'
    for i, v in enumerate(sizes, 1):
        raw[76 + 4 * i : 80 + 4 * i] = struct.pack(endian + 'f', v)
    with opener(path, 'wb') as f:
        f.write(bytes(raw))


@pytest.mark.parametrize('ext', ['.nii.gz', '.nii'])
@pytest.mark.parametrize(
    'sizes, shown',
    [
        ((0.0, 0.6, 3.0), '(0, 0.6, 3)'),
        ((0.5, -2.0, 3.0), '(0.5, -2, 3)'),
        ((0.5, 0.6, float('nan')), '(0.5, 0.6, nan)'),
        ((float('inf'), 0.6, 3.0), '(inf, 0.6, 3)'),
    ],
)
def test_voxel_size_must_be_positive_and_finite(tmp_path, ext, sizes, shown):
    path = write_volume(tmp_path / f'Case00{ext}')
    set_raw_pixdim(path, sizes)
    with pytest.raises(ValueError, match='voxel size') as err:
        read_nifti_header(path)
    assert path in str(err.value) and shown in str(err.value)


def test_voxel_size_of_the_used_dims_only(tmp_path):
    # pixdim[3] of a 2D image is not a voxel size: not checked.
    path = str(tmp_path / 'flat.nii.gz')
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.int16), np.eye(4)), path)
    set_raw_pixdim(path, (0.7, 0.8, 0.0))
    shape, spacing, _ = read_nifti_header(path)
    assert shape == (4, 5) and spacing == pytest.approx((0.7, 0.8))


def _prostate_case(root, img_spacing, seg_spacing):
    folder = root / 'RUNMC'
    folder.mkdir(parents=True)
    img = write_volume(folder / 'Case00.nii.gz', img_spacing)
    seg = write_volume(
        folder / 'Case00_segmentation.nii.gz', seg_spacing, seg=True
    )
    return img, seg


def test_dataset_refuses_bad_and_names_disagreeing_voxel_sizes(
    tmp_path, monkeypatch
):
    # Good files load with their spacing.
    img, seg = _prostate_case(tmp_path / 'ok', (0.5, 0.6, 3.0), (0.5, 0.6, 3))
    ds = ProstateDGDataset(data_root=str(tmp_path / 'ok'), domains=[1])
    assert len(ds) == 4
    assert ds.get_data_info(0)['spacing'] == pytest.approx((0.5, 0.6, 3.0))
    # Within the tolerance (0.1%): one case.
    _prostate_case(tmp_path / 'close', (0.5, 0.6, 3.0), (0.5, 0.6, 3.002))
    ProstateDGDataset(data_root=str(tmp_path / 'close'), domains=[1])

    img, seg = _prostate_case(tmp_path / 'sp0', (0.5, 0.6, 3.0), (0.5, 0.6, 3))
    set_raw_pixdim(img, (0.5, 0.6, 0.0))
    with pytest.raises(ValueError, match='voxel size') as err:
        ProstateDGDataset(data_root=str(tmp_path / 'sp0'), domains=[1])
    assert img in str(err.value)

    img, seg = _prostate_case(tmp_path / 'neg', (0.5, 0.6, 3.0), (0.5, 0.6, 3))
    set_raw_pixdim(seg, (0.5, 0.6, -3.0))
    with pytest.raises(ValueError, match='voxel size') as err:
        ProstateDGDataset(data_root=str(tmp_path / 'neg'), domains=[1])
    assert seg in str(err.value) and '(0.5, 0.6, -3)' in str(err.value)

    img, seg = _prostate_case(
        tmp_path / 'diff', (0.5, 0.6, 3.0), (0.5, 0.6, 4)
    )
    logged = []
    monkeypatch.setattr(
        nifti, 'print_log', lambda msg, **kwargs: logged.append(msg)
    )
    ds = ProstateDGDataset(data_root=str(tmp_path / 'diff'), domains=[1])
    (msg,) = logged
    assert 'differs from its image' in msg
    assert img in msg and seg in msg and '(0.5, 0.6, 4)' in msg
    # The image's size is used.
    assert ds.get_data_info(0)['spacing'] == pytest.approx((0.5, 0.6, 3.0))


def test_a_segmentation_in_another_orientation_is_named(tmp_path, monkeypatch):
    folder = tmp_path / 'RUNMC'
    folder.mkdir()
    img = write_volume(folder / 'Case00.nii.gz')
    seg = str(folder / 'Case00_segmentation.nii.gz')
    data = (np.random.RandomState(0).rand(6, 5, 4) > 0.5).astype(np.uint8)
    # Same voxel sizes, x flipped: the labels would not lie on the image.
    affine = np.diag([-0.5, 0.6, 3.0, 1.0])
    affine[0, 3] = 2.5
    nib.save(nib.Nifti1Image(data, affine), seg)
    logged = []
    monkeypatch.setattr(
        nifti, 'print_log', lambda msg, **kwargs: logged.append(msg)
    )
    ProstateDGDataset(data_root=str(tmp_path), domains=[1])
    (msg,) = logged
    assert 'affine differs' in msg and img in msg and seg in msg
    # The same affine: no warning.
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 3.0, 1.0])), seg)
    logged.clear()
    ProstateDGDataset(data_root=str(tmp_path), domains=[1])
    assert logged == []


# ---------------------------------------------------------------- images


def fundus_like(size=64):
    """A smooth BGR image (compresses like a photograph)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    bgr = np.stack([yy * 200, xx * 200, (1 - yy) * 150 + 50], -1)
    bgr[size // 4 : size // 2, size // 4 : size // 2] = (20, 200, 240)
    return bgr.astype(np.uint8)


def write_jpeg(path, size=64):
    ok, buf = cv2.imencode('.jpg', fundus_like(size))
    assert ok
    data = buf.tobytes()
    path.write_bytes(data)
    return data


def test_damaged_jpeg_names_the_file(tmp_path, capfd):
    good = tmp_path / 'good.jpg'
    data = write_jpeg(good)
    assert read_image_as_stored(str(good)).shape == (64, 64, 3)
    # Garbage in the middle of the entropy-coded data: cv2 alone decodes a
    # part-grey image, libjpeg only prints a line without the file name.
    start = data.index(b'\xff\xda') + 20
    mid = start + (len(data) - start) // 3
    bad = bytearray(data)
    bad[mid : mid + 16] = b'\xff\x3d' * 8
    garbage = tmp_path / 'garbage.jpg'
    garbage.write_bytes(bytes(bad))
    plain = cv2.imdecode(np.frombuffer(bytes(bad), np.uint8), 1)
    assert plain is not None and plain.shape == (64, 64, 3)
    capfd.readouterr()
    with pytest.raises(ValueError, match='corrupt fundus image') as err:
        LoadFundusImageFromFile()(dict(img_path=str(garbage)))
    assert str(garbage) in str(err.value)
    assert 'Corrupt JPEG data' in str(err.value)
    # The message is the error's now, not a stray line on stderr.
    assert 'Corrupt JPEG' not in capfd.readouterr().err
    # Zeroed bytes (a lost disk block) are reported by libjpeg as well.
    bad = bytearray(data)
    bad[mid : mid + 64] = bytes(64)
    zeroed = tmp_path / 'zeroed.jpg'
    zeroed.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match='corrupt image') as err:
        read_image_as_stored(str(zeroed))
    assert str(zeroed) in str(err.value)
    # Truncated.
    trunc = tmp_path / 'trunc.jpg'
    trunc.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match='corrupt') as err:
        read_image_as_stored(str(trunc))
    assert str(trunc) in str(err.value)
    # A JPEG mask is checked the same way.
    with pytest.raises(ValueError, match='corrupt mask') as err:
        read_grey_mask(str(garbage))
    assert str(garbage) in str(err.value)


def test_jpeg_padding_between_markers_is_a_warning(tmp_path, monkeypatch):
    # libjpeg skips bytes between two markers ("extraneous bytes before
    # marker", under its "Corrupt JPEG data" heading); some encoders write
    # them, and the pixels are those of the clean file.
    good = tmp_path / 'good.jpg'
    data = write_jpeg(good)
    sof = data.index(b'\xff\xc0')
    padded = tmp_path / 'padded.jpg'
    padded.write_bytes(data[:sof] + b'\x00\x01\x02' + data[sof:])
    logged = []
    monkeypatch.setattr(
        loading, 'print_log', lambda msg, **kwargs: logged.append(msg)
    )
    np.testing.assert_array_equal(
        read_image_as_stored(str(padded)), read_image_as_stored(str(good))
    )
    (msg,) = logged
    assert 'extraneous bytes' in msg and str(padded) in msg


def test_a_failed_decode_leaves_no_text_for_the_next(tmp_path):
    # A decode that raises after libjpeg wrote a damage line must not make
    # the next, good JPEG look damaged.
    def noisy_failure(*args):
        os.write(2, b'Corrupt JPEG data: premature end of data segment\n')
        raise RuntimeError('decoder failed')

    with pytest.raises(RuntimeError, match='decoder failed'):
        loading._call_capturing_fd2(noisy_failure)
    good = tmp_path / 'good.jpg'
    write_jpeg(good)
    assert read_image_as_stored(str(good)).shape == (64, 64, 3)


def test_alpha_and_bit_depth(tmp_path):
    bgr = fundus_like(16)
    alpha = np.full((16, 16, 1), 255, np.uint8)
    opaque = tmp_path / 'opaque.png'
    cv2.imwrite(str(opaque), np.concatenate([bgr, alpha], 2))
    assert np.array_equal(read_image_as_stored(str(opaque)), bgr)
    # Grey + opaque alpha: grey repeated to 3 channels.
    grey_alpha = tmp_path / 'grey_alpha.png'
    grey = bgr[..., 1]
    Image.fromarray(np.dstack([grey, alpha[..., 0]]), 'LA').save(grey_alpha)
    assert np.array_equal(
        read_image_as_stored(str(grey_alpha)), np.dstack([grey] * 3)
    )

    alpha[:4] = 0
    transparent = tmp_path / 'transparent.png'
    cv2.imwrite(str(transparent), np.concatenate([bgr, alpha], 2))
    with pytest.raises(ValueError, match='transparent pixel') as err:
        read_image_as_stored(str(transparent))
    assert str(transparent) in str(err.value) and ' 64 ' in str(err.value)

    # 12-bit data in a 16-bit PNG: shifted to 8 bits it would be nearly
    # black; refused, with the bit depth and the file.
    deep = tmp_path / 'deep.png'
    cv2.imwrite(str(deep), bgr.astype(np.uint16) * 16)
    with pytest.raises(ValueError, match='16-bit') as err:
        LoadFundusImageFromFile()(dict(img_path=str(deep)))
    assert str(deep) in str(err.value) and 'convert' in str(err.value)
    grey16 = tmp_path / 'grey16.tif'
    cv2.imwrite(str(grey16), grey.astype(np.uint16) * 257)
    with pytest.raises(ValueError, match='16-bit') as err:
        read_image_as_stored(str(grey16))
    assert str(grey16) in str(err.value)

    # 8-bit grey and colour images read as before.
    for name, arr in (('grey.png', grey), ('rgb.bmp', bgr)):
        cv2.imwrite(str(tmp_path / name), arr)
        out = read_image_as_stored(str(tmp_path / name))
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8


# ------------------------------------------------------- domain folders


@pytest.fixture
def site(tmp_path):
    """One domain folder of the multi-site 2D layout, two good cases."""
    root = tmp_path / 'root'
    make_multisite(str(root), seed=0, cases=2, size=16)
    return root / MULTISITE_SITES[0]


def _pair(folder, **kw):
    kw = {'img_dir': 'images', 'mask_dir': 'masks', **kw}
    return pair_case_files(str(folder), split_image_ext, **kw)


def test_unread_image_types_are_errors(site):
    assert [c[0] for c in _pair(site)] == ['case00', 'case01']
    for path, data in (
        # An image of a type the layout does not read.
        (site / 'images' / 'case04.webp', b'RIFF'),
        # An orphan mask of such a type.
        (site / 'masks' / 'case05.gif', b'GIF89a'),
        # A NIfTI volume in a 2D layout (file_kind mix-up).
        (site / 'images' / 'case06.nii.gz', b''),
    ):
        path.write_bytes(data)
        with pytest.raises(ValueError, match='does not read') as err:
            _pair(site)
        assert str(path) in str(err.value) and '.png' in str(err.value)
        path.unlink()
    # A mask folder of its own holds only suffixed masks.
    (site / 'masks' / 'case00.png').rename(site / 'masks' / 'case00_m.png')
    (site / 'masks' / 'case01.png').rename(site / 'masks' / 'case01_mask.png')
    with pytest.raises(ValueError, match="lacks the mask suffix '_mask'"):
        _pair(site, mask_suffix='_mask')


def test_other_files_are_named_in_a_warning(site, monkeypatch):
    logged = []
    monkeypatch.setattr(
        base_module, 'print_log', lambda msg, **kw: logged.append(msg)
    )
    _pair(site)
    assert logged == []
    for i in range(7):
        (site / 'images' / f'notes{i}.txt').write_text('x')
    (site / 'masks' / 'README').write_text('x')
    (site / 'images' / 'more').mkdir()
    assert len(_pair(site)) == 2
    (msg,) = logged
    assert 'passing over 9 file(s)' in msg
    assert str(site / 'images' / 'more') + os.sep in msg
    assert 'notes0.txt' in msg and 'and 4 more' in msg


def test_nifti_layout_refuses_images_and_warns_about_the_rest(
    tmp_path, monkeypatch
):
    logged = []
    monkeypatch.setattr(
        base_module, 'print_log', lambda msg, **kw: logged.append(msg)
    )
    folder = tmp_path / 'RUNMC'
    folder.mkdir()
    write_volume(folder / 'Case00.nii.gz')
    write_volume(folder / 'Case00_segmentation.nii.gz', seg=True)
    (folder / 'notes.txt').write_text('x')
    cases = pair_case_files(
        str(folder), split_nifti_ext, mask_suffix='_segmentation'
    )
    assert [c[0] for c in cases] == ['Case00']
    assert len(logged) == 1 and 'notes.txt' in logged[0]
    png = folder / 'Case00_preview.png'
    cv2.imwrite(str(png), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r'reads \.nii\.gz, \.nii') as err:
        ProstateDGDataset(data_root=str(tmp_path), domains=[1])
    assert str(png) in str(err.value)


def test_multisite_dataset_refuses_a_webp(site):
    cfg = load_base_config('multisite_2d')
    ds_cfg = dict(cfg.test_dataloader.dataset)
    ds_cfg.pop('type')
    ds_cfg.update(data_root=str(site.parent), domains=[1])
    assert len(MultiSiteDataset(**ds_cfg)) == 2
    (site / 'images' / 'case04.webp').write_bytes(b'RIFF')
    with pytest.raises(ValueError, match='case04.webp'):
        MultiSiteDataset(**ds_cfg)


def test_palette_png_masks_give_their_indices(tmp_path):
    # The usual mmseg / VOC label PNG: indexed colour, labels = indices
    # (as mmseg's pillow loader reads them), whatever the palette's colours.
    labels = np.zeros((6, 7), np.uint8)
    labels[1:4, 2:5] = 1
    labels[2, 3] = 2
    img = Image.fromarray(labels, mode='P')
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    path = tmp_path / 'mask.png'
    img.save(path)
    np.testing.assert_array_equal(read_grey_mask(str(path)), labels)
    # Truncated: an error naming the file.
    data = path.read_bytes()
    bad = tmp_path / 'bad.png'
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='cannot decode') as err:
        read_grey_mask(str(bad))
    assert str(bad) in str(err.value)
