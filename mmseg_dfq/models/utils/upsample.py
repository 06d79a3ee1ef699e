"""Bilinear upsampling whose compiled backward gathers instead of scatters."""

from typing import Sequence

import torch
import torch.nn.functional as F

from .tracing import is_compiling


def bilinear_resize(
    x: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear')``, compile-friendly.

    Inside ``torch.compile``, inductor lowers the backward of a bilinear
    upsampling to an index_put with accumulation: every output gradient is
    added to its four source pixels with atomic adds. On the DFQ head's
    fusion (three 768-channel levels upsampled to stride 4, then a norm)
    that one kernel took 6.3 ms of a 27 ms MiT-b2 B16 @ 256 train step on
    an H200. For an integer upscaling factor and ``align_corners=False``
    the same interpolation is written here as, per axis, the input with its
    edge pixels repeated, and each of the ``s`` output phases a weighted sum
    of two shifted slices of it; the backward of slices and stacks is made
    of gathers and pads, which inductor fuses without atomics.

    The result equals ``F.interpolate``'s to rounding: the same two-tap
    weights per axis, width first and then height as torch's kernels
    (tested forward and backward in float64). Outside compilation, for
    downsampling, fractional factors or ``align_corners=True`` this is
    ``F.interpolate`` (one kernel: the slices would be more launches in
    eager mode).

    Args:
        x (Tensor): (B, C, H, W).
        size (Sequence[int]): Output (height, width).
        align_corners (bool): As ``F.interpolate``. Default: False.

    Returns:
        Tensor: (B, C, *size).
    """
    # Not int(): under torch.jit.trace the sizes are traced values, and
    # ints would fix the traced model's input size.
    size = tuple(size)
    if is_compiling() and not align_corners and x.ndim == 4:
        (oh, ow), (h, w) = (int(v) for v in size), x.shape[-2:]
        if oh % h == 0 and ow % w == 0:
            return upsample_by_slices(x, oh // h, ow // w)
    return F.interpolate(
        x, size=size, mode='bilinear', align_corners=align_corners
    )


def upsample_by_slices(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """Bilinear upsampling of (B, C, H, W) by integer factors, from slices.

    Width first, then height (the order of torch's kernels). The result has
    ``F.interpolate``'s memory format: channels-last for a channels-last
    input (the RDWT backbone's maps), so that the convolution after it
    gets the layout it would get in eager mode.
    """
    out = _upsample_axis(_upsample_axis(x, 3, sw), 2, sh)
    channels_last = (
        x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )
    if channels_last:
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _upsample_axis(x: torch.Tensor, dim: int, s: int) -> torch.Tensor:
    """Bilinear (``align_corners=False``) upsampling of one axis by ``s``.

    Output pixel ``j * s + k`` samples the input at ``j + d_k`` with
    ``d_k = (k + 0.5) / s - 0.5``, a fraction in (-0.5, 0.5); outside the
    input the edge pixel is repeated, which is torch's clamping of the
    source index. With the input padded by its edge pixels (``p[i + 1] =
    x[i]``), phase ``k`` is ``-d_k * p[j] + (1 + d_k) * p[j + 1]`` for
    ``d_k < 0`` and ``(1 - d_k) * p[j + 1] + d_k * p[j + 2]`` otherwise.
    """
    if s == 1:
        return x
    n = x.shape[dim]
    padded = torch.cat(
        [x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim=dim
    )
    phases = []
    for k in range(s):
        d = (k + 0.5) / s - 0.5
        if d == 0:  # odd s, middle phase: the pixel itself
            phases.append(x)
            continue
        if d < 0:
            lo, w_lo, w_hi = 0, -d, 1 + d
        else:
            lo, w_lo, w_hi = 1, 1 - d, d
        phases.append(
            padded.narrow(dim, lo, n) * w_lo
            + padded.narrow(dim, lo + 1, n) * w_hi
        )
    # (..., n, s, ...) -> (..., n * s, ...): phase k of pixel j at j * s + k.
    return torch.stack(phases, dim=dim + 1).flatten(dim, dim + 1)
