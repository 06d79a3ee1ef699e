"""Whitening statistics shared by the RDWT backbone, neck and loss.

RDWT normalises groups of feature values and decorrelates those groups.
Which values form a group is the *layout*:

- ``'channels'``: a group is one channel of one sample, its H x W values
  (what the paper's text describes; the default).
- ``'authors'``: the published code turns the (B, N, C) tokens of a stage
  into (B, C, H, W) with a plain reshape (no transpose), so group g holds
  the g-th run of H*W consecutive values of the row-major (N, C) token
  matrix: a strip of H*W/C consecutive tokens with all their channels.
  After normalising it reshapes back to (B, H, W, C) and permutes to NCHW.

Every function takes and returns NCHW maps, so callers never see the
grouping.
"""

import torch
import torch.nn.functional as F

RDWT_LAYOUTS = ('channels', 'authors')


def check_layout(layout: str, owner: str) -> str:
    """Return ``layout`` if it is a known RDWT layout, else raise.

    Args:
        layout (str): ``'channels'`` or ``'authors'``.
        owner (str): Name of the module, for the message.

    Returns:
        str: ``layout``.
    """
    if layout not in RDWT_LAYOUTS:
        raise ValueError(
            f'{owner}: rdwt layout must be one of {RDWT_LAYOUTS}, got '
            f'{layout!r}'
        )
    return layout


def whitening_groups(x: torch.Tensor, layout: str) -> torch.Tensor:
    """View an NCHW map as (B, G, L) groups of the given layout.

    Args:
        x (Tensor): Map of shape (B, C, H, W).
        layout (str): ``'channels'`` or ``'authors'``.

    Returns:
        Tensor: (B, C, H*W); for ``'authors'`` group g is values
        ``[g*HW, (g+1)*HW)`` of the sample's token-major (H, W, C) values.
    """
    b, c, h, w = x.shape
    if layout == 'channels':
        return x.reshape(b, c, h * w)
    return x.permute(0, 2, 3, 1).reshape(b, c, h * w)


def from_whitening_groups(
    groups: torch.Tensor, shape: torch.Size, layout: str
) -> torch.Tensor:
    """Inverse of :func:`whitening_groups`.

    Args:
        groups (Tensor): (B, C, H*W) groups.
        shape (torch.Size): The (B, C, H, W) shape of the map.
        layout (str): ``'channels'`` or ``'authors'``.

    Returns:
        Tensor: Map of shape (B, C, H, W).
    """
    b, c, h, w = shape
    if layout == 'channels':
        return groups.reshape(b, c, h, w)
    return groups.reshape(b, h, w, c).permute(0, 3, 1, 2)


def instance_norm(
    x: torch.Tensor, eps: float = 1e-5, layout: str = 'channels'
) -> torch.Tensor:
    """Normalise each group of each sample to zero mean, unit variance.

    Args:
        x (Tensor): Feature map, shape (B, C, H, W).
        eps (float): Added to the (biased) variance. Default: 1e-5.
        layout (str): Grouping, see the module docstring.
            Default: 'channels'.

    Returns:
        Tensor: Same shape as ``x``; no affine parameters.
    """
    b, c, h, w = x.shape
    if layout == 'channels':
        groups = x
    else:
        groups = whitening_groups(x, layout)
    if h * w < 2:
        # F.instance_norm rejects a single value per group in training; its
        # statistics would give x - mean = 0 there, so return that (keeping
        # the graph) instead of failing on small inputs.
        dims = tuple(range(2, groups.dim()))
        normed = groups - groups.mean(dim=dims, keepdim=True)
    else:
        normed = F.instance_norm(groups, eps=eps)
    if layout == 'channels':
        return normed
    return from_whitening_groups(normed, x.shape, layout)


def channel_covariance(
    x: torch.Tensor, layout: str = 'channels'
) -> torch.Tensor:
    """Per-sample group covariance ``X X^T / (HW - 1)`` in float32.

    Args:
        x (Tensor): Feature map, shape (B, C, H, W), assumed zero-mean per
            group (e.g. the output of :func:`instance_norm` with the same
            layout).
        layout (str): Grouping, see the module docstring.
            Default: 'channels'.

    Returns:
        Tensor: Shape (B, C, C). All zeros for 1x1 maps, where a covariance
        is undefined.
    """
    # float32 even under autocast: the sums over HW overflow/round in fp16.
    flat = whitening_groups(x.float(), layout)
    b, c, n = flat.shape
    if n < 2:
        # Zeros that stay in the graph, so backward() on this alone works.
        return flat.new_zeros(b, c, c) + 0 * flat.sum()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (n - 1)


def off_diagonal_abs_sum(cov: torch.Tensor) -> torch.Tensor:
    """Sum of ``|S_jk|`` over ``j < k`` for each matrix of a batch.

    Args:
        cov (Tensor): Symmetric matrices, shape (B, C, C).

    Returns:
        Tensor: Shape (B,).
    """
    c = cov.shape[-1]
    # Half of (all entries - diagonal): the upper triangle of a symmetric S.
    total = cov.abs().sum(dim=(-2, -1))
    diag = torch.diagonal(cov, dim1=-2, dim2=-1).abs().sum(-1)
    return (total - diag) / 2 if c > 1 else total * 0
