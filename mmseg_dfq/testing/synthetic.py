"""Synthetic fundus, prostate and multi-site data in real on-disk layouts.

The real benchmarks cannot be downloaded everywhere, so tests and the CPU
demo use small generated stand-ins: a shared anatomy (optic disc and cup;
a deformed prostate ellipsoid) seen through a different acquisition per
domain (colour cast, contrast, gamma, blur, noise, vignetting; MRI contrast,
bias field, noise, voxel spacing and slice count). A seed fixes every array.
"""

import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import cv2
import nibabel as nib
import numpy as np
from scipy import ndimage

from ..datasets.fundus_codec import decode_fundus_mask, encode_fundus_labels
from ..datasets.prostate import ProstateDGDataset

# Per-domain acquisition of the four fundus domains. cast: RGB gains;
# contrast around the mean; gamma on [0, 1]; blur: Gaussian sigma as a
# fraction of the image size; noise: std on [0, 1]; vignette: darkening at
# the corners; bright: global gain.
FUNDUS_STYLES = (
    dict(cast=(1.00, 0.62, 0.38), contrast=1.0, gamma=1.0, blur=0.0,
         noise=0.015, vignette=0.15, bright=1.0),
    dict(cast=(0.95, 0.75, 0.55), contrast=0.75, gamma=0.8, blur=0.012,
         noise=0.04, vignette=0.45, bright=0.85),
    dict(cast=(1.00, 0.50, 0.25), contrast=1.25, gamma=1.3, blur=0.0,
         noise=0.025, vignette=0.3, bright=1.1),
    dict(cast=(0.90, 0.60, 0.45), contrast=1.1, gamma=1.15, blur=0.006,
         noise=0.03, vignette=0.6, bright=0.95),
)  # fmt: skip

# Per-site MRI acquisition of the six prostate domains. fov: in-plane field
# of view in mm (spacing = fov / size); thick: slice thickness in mm;
# depth: where the slice count lies in the requested range (0..1);
# scale: stored intensity of tissue value 1; bias: bias-field strength.
PROSTATE_STYLES = (
    dict(fov=140.0, thick=3.0, depth=0.5, scale=900.0, gamma=1.0,
         contrast=1.0, noise=0.02, bias=0.2),
    dict(fov=160.0, thick=3.6, depth=0.25, scale=2500.0, gamma=0.8,
         contrast=0.8, noise=0.05, bias=0.45),
    dict(fov=120.0, thick=2.5, depth=1.0, scale=300.0, gamma=1.3,
         contrast=1.2, noise=0.03, bias=0.1),
    dict(fov=150.0, thick=4.0, depth=0.0, scale=1200.0, gamma=1.1,
         contrast=0.9, noise=0.04, bias=0.35),
    dict(fov=170.0, thick=3.0, depth=0.75, scale=3000.0, gamma=0.7,
         contrast=1.1, noise=0.06, bias=0.5),
    dict(fov=130.0, thick=3.3, depth=0.4, scale=600.0, gamma=1.2,
         contrast=1.0, noise=0.025, bias=0.25),
)  # fmt: skip
PROSTATE_SITES = ProstateDGDataset.METAINFO['domains']


def _rng(*keys: int) -> np.random.Generator:
    """Generator seeded by a tuple of ints, independent per tuple."""
    return np.random.default_rng([int(k) for k in keys])


def fundus_case(
    rng: np.random.Generator, size: int, style: dict
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one fundus optic-disc crop and its grey-level mask.

    Args:
        rng (np.random.Generator): Source of randomness.
        size (int): Image height and width in pixels.
        style (dict): A domain's acquisition, see ``FUNDUS_STYLES``.

    Returns:
        tuple[np.ndarray, np.ndarray]: RGB image (uint8, (size, size, 3)) and
        mask (uint8, (size, size)) with 255 background, 128 disc rim, 0 cup.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy = yy / (size - 1) * 2 - 1
    xx = xx / (size - 1) * 2 - 1

    # Disc: ellipse around the centre; cup inside it with a plausible
    # cup-to-disc ratio and a small offset.
    cx, cy = rng.uniform(-0.12, 0.12, 2)
    rx = rng.uniform(0.42, 0.55)
    ry = rx * rng.uniform(0.88, 1.12)
    angle = rng.uniform(0, np.pi)
    cdr = rng.uniform(0.3, 0.7)
    ccx = cx + rng.uniform(-0.25, 0.25) * rx * (1 - cdr)
    ccy = cy + rng.uniform(-0.25, 0.25) * ry * (1 - cdr)

    def ellipse_dist(x0, y0, ax, ay):
        c, s = np.cos(angle), np.sin(angle)
        u = (xx - x0) * c + (yy - y0) * s
        v = -(xx - x0) * s + (yy - y0) * c
        return np.sqrt((u / ax) ** 2 + (v / ay) ** 2)

    d_disc = ellipse_dist(cx, cy, rx, ry)
    d_cup = ellipse_dist(ccx, ccy, cdr * rx, cdr * ry)
    labels = np.zeros((size, size), np.uint8)
    labels[d_disc <= 1] = 1
    labels[(d_cup <= 1) & (d_disc <= 1)] = 2
    mask = encode_fundus_labels(labels)

    # Luminance: textured retina, soft bright disc, brighter cup.
    tex = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 12)
    tex /= np.abs(tex).max() + 1e-8
    lum = 0.42 + 0.06 * tex
    disc = np.clip((1.15 - d_disc) / 0.3, 0, 1)
    cup = np.clip((1.1 - d_cup) / 0.3, 0, 1) * (d_disc <= 1)
    lum = lum + 0.3 * disc + 0.2 * cup

    # Vessels leave the disc as dark random walks.
    vessels = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(3, 6)):
        theta = rng.uniform(0, 2 * np.pi)
        px, py = cx + 0.1 * np.cos(theta), cy + 0.1 * np.sin(theta)
        pts = []
        for _ in range(12):
            theta += rng.normal(0, 0.25)
            px += 0.15 * np.cos(theta)
            py += 0.15 * np.sin(theta)
            pts.append(((px + 1) / 2 * (size - 1), (py + 1) / 2 * (size - 1)))
        pts = np.round(np.array(pts)).astype(np.int32)
        cv2.polylines(vessels, [pts], False, 1.0, max(1, size // 64))
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(size / 160, 0.5))
    lum = lum * (1 - 0.45 * np.clip(vessels, 0, 1))

    # Retina is orange-red; the disc is paler (towards yellow-white).
    cast = np.asarray(style['cast'])
    pale = np.array([1.0, 0.92, 0.75])
    w = disc[..., None] * 0.8
    rgb = lum[..., None] * ((1 - w) * cast + w * pale)

    # Acquisition of this domain.
    mean = rgb.mean()
    rgb = (rgb - mean) * style['contrast'] + mean
    rgb = np.clip(rgb * style['bright'], 0, 1) ** style['gamma']
    rgb = rgb * (1 - style['vignette'] * (xx**2 + yy**2)[..., None] / 2)
    if style['blur'] > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), style['blur'] * size)
    rgb = rgb + rng.normal(0, style['noise'], rgb.shape)
    img = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return img, mask


def make_fundus(
    out_dir: str,
    seed: int = 0,
    cases: int = 10,
    size: int = 96,
    test_fraction: float = 0.4,
) -> Dict[str, Dict[str, int]]:
    """Write a synthetic fundus set in the DoFE layout.

    Writes ``Domain{k}/{train,test}/ROIs/{image,mask}/*.png`` (RGB image,
    single-channel mask with 255 / 128 / 0) and ``Domain{k}_{split}.list``
    for the four domains.

    Args:
        out_dir (str): Data root to write into (created if missing).
        seed (int): Seed of every random draw. Default: 0.
        cases (int): Images per domain, split into train and test.
            Default: 10.
        size (int): Image height and width. Default: 96.
        test_fraction (float): Fraction of each domain's images in the test
            split. Default: 0.4.

    Returns:
        dict: Number of images per domain name and split.
    """
    n_test = int(round(cases * test_fraction))
    counts = {'train': cases - n_test, 'test': n_test}
    if min(counts.values()) < 1:
        raise ValueError(
            f'cases={cases} with test_fraction={test_fraction} leaves an '
            'empty split'
        )
    summary = {}
    for k, style in enumerate(FUNDUS_STYLES, 1):
        name = f'Domain{k}'
        summary[name] = dict(counts)
        for split_id, split in enumerate(('train', 'test')):
            lines = []
            for kind in ('image', 'mask'):
                os.makedirs(
                    osp.join(out_dir, name, split, 'ROIs', kind),
                    exist_ok=True,
                )
            for i in range(counts[split]):
                img, mask = fundus_case(
                    _rng(seed, k, split_id, i), size, style
                )
                fname = f'synth_d{k}_{split}_{i:03d}.png'
                rel_img = f'{name}/{split}/ROIs/image/{fname}'
                rel_mask = f'{name}/{split}/ROIs/mask/{fname}'
                # cv2 writes BGR, the PNG holds RGB.
                cv2.imwrite(osp.join(out_dir, rel_img), img[..., ::-1])
                cv2.imwrite(osp.join(out_dir, rel_mask), mask)
                lines.append(f'{rel_img} {rel_mask}\n')
            with open(osp.join(out_dir, f'{name}_{split}.list'), 'w') as f:
                f.writelines(lines)
    return summary


def prostate_case(
    rng: np.random.Generator,
    size: int,
    num_slices: int,
    style: dict,
    with_zone: bool,
) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]:
    """Draw one T2-like prostate volume and its labels.

    Args:
        rng (np.random.Generator): Source of randomness.
        size (int): In-plane height and width in voxels.
        num_slices (int): Slices along the third axis.
        style (dict): A site's acquisition, see ``PROSTATE_STYLES``.
        with_zone (bool): Label a central sub-zone 2 (as some volumes of
            the release do).

    Returns:
        tuple: Image (int16, (size, size, num_slices)), labels (uint8, same
        shape, 0 / 1 / 2) and the voxel spacing (mm).
    """
    sp = style['fov'] / size
    thick = style['thick']
    spacing = (sp, sp, thick)
    shape = (size, size, num_slices)
    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing)), indexing='ij'
    )
    x, y, z = grid
    fov = np.array([n * s for n, s in zip(shape, spacing)])

    # Prostate: deformed ellipsoid of fixed physical size near the centre.
    centre = fov / 2 + rng.uniform(-1, 1, 3) * np.array([6, 6, 0.1 * fov[2]])
    a, b = rng.uniform(17, 23), rng.uniform(13, 18)
    c = min(rng.uniform(12, 17), 0.38 * fov[2])
    dx, dy, dz = (x - centre[0]) / a, (y - centre[1]) / b, (z - centre[2]) / c
    dist = np.sqrt(dx**2 + dy**2 + dz**2)
    theta = np.arctan2(dy, dx)
    p = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform(0.04, 0.12, 3)
    bound = (
        1
        + amp[0] * np.cos(2 * theta + p[0])
        + amp[1] * np.cos(3 * theta + p[1])
        + amp[2] * dz * np.cos(theta + p[2])
    )
    prostate = dist < bound
    zone = prostate & (dist < 0.55 * bound)
    seg = prostate.astype(np.uint8)
    if with_zone:
        seg[zone] = 2

    # Tissue: pelvis ellipse with smooth texture; bright peripheral zone,
    # darker central gland; air outside.
    body = ((x - fov[0] / 2) / (0.45 * fov[0])) ** 2 + (
        (y - fov[1] / 2) / (0.38 * fov[1])
    ) ** 2 < 1
    tex = ndimage.gaussian_filter(
        rng.normal(size=shape), (size / 16,) * 2 + (1,)
    )
    tex /= np.abs(tex).max() + 1e-8
    tissue = np.where(body, 0.35 + 0.08 * tex, 0.02)
    tissue = np.where(prostate, 0.62 + 0.05 * tex, tissue)
    tissue = np.where(zone, 0.42 + 0.05 * tex, tissue)
    tissue = ndimage.gaussian_filter(tissue, (0.7, 0.7, 0.3))

    # Acquisition of this site: contrast, gamma, bias field, Rician noise.
    tissue = np.clip((tissue - 0.4) * style['contrast'] + 0.4, 0, 1)
    tissue = tissue ** style['gamma']
    u = (x / fov[0] - 0.5, y / fov[1] - 0.5, z / fov[2] - 0.5)
    coef = rng.normal(size=4)
    bias = coef[0] * u[0] + coef[1] * u[1] + coef[2] * u[0] * u[1]
    bias = np.exp(style['bias'] * (bias + 0.3 * coef[3] * u[2]))
    tissue = tissue * bias
    n1 = rng.normal(0, style['noise'], shape)
    n2 = rng.normal(0, style['noise'], shape)
    tissue = np.sqrt((tissue + n1) ** 2 + n2**2)
    img = np.clip(np.round(tissue * style['scale']), 0, 32767)
    return img.astype(np.int16), seg, spacing


def make_prostate(
    out_dir: str,
    seed: int = 0,
    cases: int = 3,
    size: int = 64,
    slices: Sequence[int] = (8, 16),
) -> Dict[str, int]:
    """Write a synthetic prostate set in the SAML layout.

    Writes ``<site>/CaseXX.nii.gz`` and ``<site>/CaseXX_segmentation.nii.gz``
    for the six sites; the affine holds the site's voxel spacing (which the
    header zooms then report). Odd-numbered cases also carry label 2.

    Args:
        out_dir (str): Data root to write into (created if missing).
        seed (int): Seed of every random draw. Default: 0.
        cases (int): Volumes per site. Default: 3.
        size (int): In-plane height and width. Default: 64.
        slices (Sequence[int]): Range of slice counts; each site has its
            own count in it. Default: (8, 16).

    Returns:
        dict: Number of volumes per site.
    """
    lo, hi = int(slices[0]), int(slices[1])
    if not 3 <= lo <= hi:
        raise ValueError(f'slices must satisfy 3 <= min <= max, got {slices}')
    summary = {}
    for k, (site, style) in enumerate(zip(PROSTATE_SITES, PROSTATE_STYLES), 1):
        folder = osp.join(out_dir, site)
        os.makedirs(folder, exist_ok=True)
        depth = int(round(lo + style['depth'] * (hi - lo)))
        for i in range(cases):
            img, seg, spacing = prostate_case(
                _rng(seed, k, i), size, depth, style, with_zone=i % 2 == 1
            )
            affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
            affine[:3, 3] = [size * spacing[0] / 2, size * spacing[1] / 2, 0]
            nib.save(
                nib.Nifti1Image(img, affine),
                osp.join(folder, f'Case{i:02d}.nii.gz'),
            )
            nib.save(
                nib.Nifti1Image(seg, affine),
                osp.join(folder, f'Case{i:02d}_segmentation.nii.gz'),
            )
        summary[site] = cases
    return summary


# The hospitals of the multi-site example (README, "Your own multi-site
# data"): each borrows the acquisition of one benchmark domain.
MULTISITE_SITES = ('HospitalA', 'HospitalB', 'HospitalC')


def make_multisite(
    out_dir: str,
    seed: int = 0,
    file_kind: str = 'image',
    cases: Optional[int] = None,
    size: Optional[int] = None,
) -> Dict[str, int]:
    """Write a multi-site set in the layout ``MultiSiteDataset`` reads.

    ``file_kind='image'``: ``<site>/images/case<i>.png`` (RGB fundus crops)
    and ``<site>/masks/case<i>.png`` storing the optic disc as 255 on 0
    (``mask_values={0: 0, 255: 1}``). ``file_kind='nifti'``:
    ``<site>/images/case<i>.nii.gz`` (T2-like volumes with the site's
    spacing) and ``<site>/labels/case<i>.nii.gz`` with 0 background, 1
    prostate and on odd cases 2 for a central zone
    (``mask_values={0: 0, 1: 1, 2: 1}``). The sites are
    ``MULTISITE_SITES``.

    Args:
        out_dir (str): Data root to write into (created if missing).
        seed (int): Seed of every random draw. Default: 0.
        file_kind (str): ``'image'`` or ``'nifti'``. Default: 'image'.
        cases (int, optional): Cases per site. Default: 6 images or 3
            volumes.
        size (int, optional): Image size / in-plane size. Default: 64 / 48.

    Returns:
        dict: Number of cases per site.
    """
    if file_kind not in ('image', 'nifti'):
        raise ValueError(f"file_kind must be 'image' or 'nifti': {file_kind}")
    nifti = file_kind == 'nifti'
    cases = (3 if nifti else 6) if cases is None else int(cases)
    size = (48 if nifti else 64) if size is None else int(size)
    summary = {}
    for k, site in enumerate(MULTISITE_SITES, 1):
        img_dir = osp.join(out_dir, site, 'images')
        mask_dir = osp.join(out_dir, site, 'labels' if nifti else 'masks')
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        for i in range(cases):
            rng = _rng(seed, 100 + k, i)
            if nifti:
                style = PROSTATE_STYLES[k - 1]
                depth = 6 + 2 * k
                img, seg, spacing = prostate_case(
                    rng, size, depth, style, with_zone=i % 2 == 1
                )
                affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
                for folder, arr in ((img_dir, img), (mask_dir, seg)):
                    nib.save(
                        nib.Nifti1Image(arr, affine),
                        osp.join(folder, f'case{i:02d}.nii.gz'),
                    )
            else:
                img, grey = fundus_case(rng, size, FUNDUS_STYLES[k - 1])
                disc = np.where(decode_fundus_mask(grey) > 0, 255, 0)
                disc = disc.astype(np.uint8)
                name = f'case{i:02d}.png'
                cv2.imwrite(osp.join(img_dir, name), img[..., ::-1])
                cv2.imwrite(osp.join(mask_dir, name), disc)
        summary[site] = cases
    return summary
