"""RDWTLoss (models/losses/rdwt_loss.py), against NumPy re-computations
of the loss and of the authors' objective.
"""

import numpy as np
import pytest
import torch

from mmseg_dfq.models.losses import RDWTLoss
from mmseg_dfq.models.utils import (
    instance_norm,
)

from .dfq_parts import (
    B0,
    build_base,
    feats_for,
    make_samples,
    numpy_rdwt,
)


def numpy_groups(feat, layout):
    """(B, C, H*W) float64 groups of an NCHW map: channels, or for
    ``'authors'`` the token-major values their reshape groups."""
    x = feat.detach().double().numpy()
    b, c, h, w = x.shape
    if layout == 'authors':
        x = x.transpose(0, 2, 3, 1)
    return x.reshape(b, c, h * w)


def numpy_standardise(groups, eps):
    """Zero mean, unit (biased) variance per group."""
    return (groups - groups.mean(-1, keepdims=True)) / np.sqrt(
        groups.var(-1, keepdims=True) + eps
    )


def numpy_authors_objective(feats, layout='channels', eps=1e-5):
    """The authors' formula: 1e-4 * (sum_i mean_b sum|triu(S_i + eps I)|)/n.

    Returns the value and its constant diagonal part (sum_j |S_jj + eps|,
    averaged like the rest), so that value - diagonal is what RDWTLoss
    reports by default. ``layout='authors'`` groups the token-major values
    as their reshape without a transpose does.
    """
    value = diagonal = 0.0
    for feat in feats:
        x = numpy_standardise(numpy_groups(feat, layout), eps)
        c, n = x.shape[1:]
        cov = np.einsum('bcn,bdn->bcd', x, x) / (n - 1) + eps * np.eye(c)
        value += np.abs(np.triu(cov)).sum(axis=(1, 2)).mean()
        diagonal += np.abs(np.diagonal(cov, axis1=1, axis2=2)).sum(-1).mean()
    n = len(feats)
    return 1e-4 * value / n, 1e-4 * diagonal / n


def test_rdwt_loss_matches_numpy():
    feats = [f * 2 + 0.5 for f in feats_for([8, 16, 24], h=32, w=48)]
    loss = RDWTLoss(loss_weight=0.3, stage_weights=[1.0, 0.5, 2.0])
    expected = numpy_rdwt(feats, [1.0, 0.5, 2.0], 0.3)
    assert loss(feats).dtype == torch.float32
    np.testing.assert_allclose(float(loss(feats)), expected, rtol=1e-5)
    # reduction='sum' keeps the earlier plain sum (4x the authors' gradient
    # with four levels).
    np.testing.assert_allclose(
        float(RDWTLoss(reduction='sum')(feats)),
        numpy_rdwt(feats, [1] * 3, 1e-4, mean=False),
        rtol=1e-5,
    )


@pytest.mark.parametrize('layout', ['channels', 'authors'])
def test_rdwt_loss_default_is_the_authors_objective(layout):
    feats = [f * 2 + 0.5 for f in feats_for(B0, h=64, w=96)]
    value, diagonal = numpy_authors_objective(feats, layout)
    ours = RDWTLoss(layout=layout)
    np.testing.assert_allclose(float(ours(feats)), value - diagonal, rtol=1e-5)
    with_diag = RDWTLoss(layout=layout, with_diagonal=True)
    np.testing.assert_allclose(float(with_diag(feats)), value, rtol=1e-5)
    # The diagonal is a constant (up to eps / var): the same gradient.
    grads = []
    for loss in (ours, with_diag):
        leaves = [f.clone().requires_grad_(True) for f in feats]
        loss(leaves).backward()
        grads.append(torch.cat([g.grad.flatten() for g in leaves]))
    scale = grads[0].abs().max().item()
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-3 * scale)
    assert grads[0].abs().sum() > 0


def test_rdwt_layouts_group_different_values():
    x = feats_for([8], h=64, w=96)[0] * 3 + 1
    by_channel = instance_norm(x, layout='channels')
    by_strip = instance_norm(x, layout='authors')
    assert by_channel.shape == by_strip.shape == x.shape
    # 'authors': each run of H*W consecutive token-major values is
    # standardised (NumPy re-statement of their reshape / permute).
    t = x.double().numpy().transpose(0, 2, 3, 1).reshape(2, 8, -1)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True))
    expected = t.reshape(2, 16, 24, 8).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(by_strip.numpy(), expected, atol=1e-4)
    assert (by_channel - by_strip).abs().max() > 0.1
    with pytest.raises(ValueError, match='layout'):
        RDWTLoss(layout='tokens')


def numpy_normalised(feat, layout, eps=1e-5):
    """A map instance-normalised per group in NumPy (float64 -> float32)."""
    b, c, h, w = feat.shape
    g = numpy_standardise(numpy_groups(feat, layout), eps)
    if layout == 'authors':
        g = g.reshape(b, h, w, c).transpose(0, 3, 1, 2)
    return torch.from_numpy(
        np.ascontiguousarray(g.reshape(b, c, h, w))
    ).float()


def numpy_covariance_terms(feats, layout, eps=1e-5):
    """Mean over levels of mean_b sum_{j<k} |S_jk| and of the diagonal of
    S + eps I, S = X X^T / (HW - 1) of the maps as given (no normalising).
    """
    off = diagonal = 0.0
    for feat in feats:
        x = numpy_groups(feat, layout)
        c, n = x.shape[1:]
        cov = np.einsum('bcn,bdn->bcd', x, x) / (n - 1)
        rows, cols = np.triu_indices(c, k=1)
        off += np.abs(cov[:, rows, cols]).sum(-1).mean()
        diagonal += (
            np.abs(np.diagonal(cov, axis1=1, axis2=2) + eps).sum(-1).mean()
        )
    return off / len(feats), diagonal / len(feats)


@pytest.mark.parametrize('layout', ['channels', 'authors'])
def test_rdwt_loss_unnormalised_takes_the_maps_as_they_are(layout):
    # Maps as an RDWT producer hands them on: normalised (here in NumPy).
    raw = [f * 2 + 0.5 for f in feats_for(B0, h=64, w=96)]
    maps = [numpy_normalised(f, layout) for f in raw]
    off, diagonal = numpy_covariance_terms(maps, layout)
    plain = RDWTLoss(loss_weight=0.5, layout=layout, normalize=False)
    np.testing.assert_allclose(float(plain(maps)), 0.5 * off, rtol=1e-5)
    with_diag = RDWTLoss(
        loss_weight=0.5, layout=layout, normalize=False, with_diagonal=True
    )
    np.testing.assert_allclose(
        float(with_diag(maps)), 0.5 * (off + diagonal), rtol=1e-5
    )
    # normalize=True normalises them a second time: a relative change of
    # ~eps * (1 / var - 1), -7.5e-6 at var 4 (-5.4e-6 measured), no more.
    again = float(RDWTLoss(loss_weight=0.5, layout=layout)(maps))
    relative = again / float(plain(maps)) - 1
    assert 1e-6 < abs(relative) < 3e-5, relative
    # And normalize=True on the raw maps is the same (first) normalisation.
    np.testing.assert_allclose(
        float(RDWTLoss(loss_weight=0.5, layout=layout)(raw)),
        0.5 * off,
        rtol=1e-5,
    )


def test_rdwt_loss_unnormalised_does_no_instance_norm(monkeypatch):
    import mmseg_dfq.models.losses.rdwt_loss as module

    maps = [numpy_normalised(f, 'channels') for f in feats_for([8, 16])]
    expected = float(RDWTLoss(normalize=False)(maps))

    def refuse(*args, **kwargs):
        raise AssertionError('instance_norm called with normalize=False')

    monkeypatch.setattr(module, 'instance_norm', refuse)
    loss = RDWTLoss(normalize=False)
    assert float(loss(maps)) == expected
    with pytest.raises(AssertionError, match='normalize=False'):
        RDWTLoss()(maps)
    # Low-precision maps still give a float32 covariance and value.
    half = [m.to(torch.bfloat16).requires_grad_(True) for m in maps]
    value = loss(half)
    assert value.dtype == torch.float32
    np.testing.assert_allclose(float(value), expected, rtol=2e-2)
    value.backward()
    assert all(m.grad.dtype == torch.bfloat16 for m in half)
    assert all(torch.isfinite(m.grad.float()).all() for m in half)


def rdwt_backbone_grads(model, image, samples, normalize, eps):
    """Gradient of the RDWT loss alone w.r.t. the backbone's parameters."""
    model.backbone.rdwt_eps = eps
    model.decode_head.loss_rdwt.eps = eps
    model.decode_head.loss_rdwt.normalize = normalize
    model.zero_grad()
    model.loss(image, samples)['decode.loss_rdwt'].backward()
    return torch.cat(
        [
            p.grad.flatten()
            for p in model.backbone.parameters()
            if p.grad is not None
        ]
    )


def test_dfq_model_gradient_same_without_second_normalisation():
    """normalize=False (the DFQ base) vs True on the same DFQ model.

    The backbone's instance-norm backward removes the per-group mean and
    the component along the normalised map, just what the loss's second
    norm would remove, so the two gradients differ only by the eps terms:
    relative ~eps / var. On this MiT-b0 at 64 x 96 the least-varying stage-4
    group (2 x 3 values) has var ~0.06 before the norm (eps / var ~2e-4);
    we measured 6.3e-4 max-relative at eps 1e-5, and 6.3e-5 at 1e-6, i.e.
    linear in eps (float32 rounding sits below 1e-6). The test asserts
    < 2e-3 and that a 10x smaller eps shrinks the gap at least 5x.
    """
    torch.manual_seed(0)
    model = build_base('dfq_mit-b0.py').eval()
    assert model.decode_head.loss_rdwt.normalize is False
    image = torch.randn(2, 3, 64, 96) * 2 + 0.3
    samples = make_samples(2, 64, 96, 3)
    gaps = []
    for eps in (1e-5, 1e-6):
        once = rdwt_backbone_grads(model, image, samples, False, eps)
        twice = rdwt_backbone_grads(model, image, samples, True, eps)
        assert once.abs().max() > 0
        gaps.append(((once - twice).abs().max() / twice.abs().max()).item())
    assert gaps[0] < 2e-3, gaps
    assert gaps[1] < gaps[0] / 5, gaps


def hadamard(n):
    """Sylvester Hadamard matrix: mutually orthogonal +-1 rows."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def correlated_maps(mix, channels=6):
    """Channels = mix * shared + (1 - mix) * own pattern, all orthogonal.

    Rows 1.. of a Hadamard matrix are zero-mean and mutually orthogonal, so
    at ``mix = 0`` the channel covariance is exactly diagonal and the
    correlation of any two channels grows monotonically with ``mix``.
    """
    h = hadamard(64)[1:]
    shared, own = h[0], h[1 : channels + 1]
    maps = mix * shared[None] + (1 - mix) * own
    return torch.tensor(maps, dtype=torch.float32).reshape(1, channels, 8, 8)


def test_rdwt_loss_zero_when_decorrelated_and_monotonic():
    loss = RDWTLoss(loss_weight=1.0)
    assert float(loss([correlated_maps(0.0)])) < 1e-5
    values = [float(loss([correlated_maps(m)])) for m in np.linspace(0, 1, 6)]
    assert all(b > a for a, b in zip(values, values[1:]))
    # Fully shared: every pair has correlation ~1 -> C (C - 1) / 2 * 64/63.
    np.testing.assert_allclose(values[-1], 15 * 64 / 63, rtol=1e-3)


@pytest.mark.parametrize(
    'feat',
    [torch.full((2, 4, 5, 6), 3.0), torch.randn(2, 4, 1, 1)],
    ids=['constant', '1x1'],
)
def test_rdwt_loss_degenerate_maps_no_nan(feat):
    feat = feat.clone().requires_grad_(True)
    value = RDWTLoss(loss_weight=1.0)([feat])
    assert torch.isfinite(value) and abs(float(value)) < 1e-6
    value.backward()
    assert torch.isfinite(feat.grad).all()
    # The 1x1 map of a tiny input also passes through the backbone.
    assert torch.isfinite(instance_norm(feat)).all()


def test_rdwt_loss_finite_under_bf16_autocast():
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    x = torch.randn(2, 3, 16, 24) * 50
    loss = RDWTLoss(loss_weight=1.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feat = conv(x)
        value = loss([feat])
    assert feat.dtype == torch.bfloat16
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


def test_rdwt_loss_bad_arguments():
    with pytest.raises(ValueError, match='loss_weight'):
        RDWTLoss(loss_weight=-1)
    with pytest.raises(ValueError, match='stage_weights'):
        RDWTLoss(stage_weights=[1, 1])(feats_for([4, 4, 4], h=32, w=32))
    with pytest.raises(ValueError, match='no feature maps'):
        RDWTLoss()([])
