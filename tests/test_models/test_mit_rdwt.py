"""RDWTMixVisionTransformer (models/backbones/mit_rdwt.py).

The reference is mmseg's own ``MixVisionTransformer``: without RDWT
stages the two are the same network.
"""

import numpy as np
import pytest
import torch
from mmseg.registry import MODELS

from mmseg_dfq.models.backbones.mit_rdwt import RDWTMixVisionTransformer
from mmseg_dfq.models.losses import RDWTLoss

from .dfq_parts import (
    B0,
    MIT_B0,
)

# Looked up, not imported: ``mmseg.models`` must load after ``mmseg_dfq``.
MixVisionTransformer = MODELS.get('MixVisionTransformer')


def test_backbone_shapes_every_stride_non_square():
    model = RDWTMixVisionTransformer(**MIT_B0).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert len(outs) == 4
    for i, (out, c) in enumerate(zip(outs, B0)):
        stride = 2 ** (i + 2)
        assert out.shape == (2, c, 64 // stride, 96 // stride)


def test_backbone_without_rdwt_equals_mmseg_mit():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0).eval()
    torch.manual_seed(1)
    exact = RDWTMixVisionTransformer(
        rdwt_stages=(), fused_attention=False, **MIT_B0
    ).eval()
    fused = RDWTMixVisionTransformer(rdwt_stages=(), **MIT_B0).eval()
    exact.load_state_dict(ref.state_dict(), strict=True)
    fused.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b, c in zip(ref(x), exact(x), fused(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            # torch's fused attention: the same attention, to rounding.
            torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


def test_fused_attention_trains_as_mmseg_attention():
    """need_weights=False (torch's fused attention) is the same attention:
    in float64, where rounding cannot hide a difference, the gradients of
    all parameters equal those through mmseg's explicit attention. (In
    float32 the RDWT norms of this test's 2 x 3 px stage-4 maps amplify the
    two paths' rounding differences.)"""
    torch.manual_seed(0)
    ref = RDWTMixVisionTransformer(fused_attention=False, **MIT_B0)
    fused = RDWTMixVisionTransformer(**MIT_B0)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    grads = []
    for model in (ref, fused):
        model.double().train()
        sum((o * o).mean() for o in model(x)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    diff = (grads[1] - grads[0]).norm() / grads[0].norm()
    assert diff < 1e-9


def test_backbone_whitens_selected_stages_and_feeds_them_on():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0).eval()
    last = RDWTMixVisionTransformer(
        rdwt_stages=(3,), fused_attention=False, **MIT_B0
    ).eval()
    first = RDWTMixVisionTransformer(
        rdwt_stages=(0,), fused_attention=False, **MIT_B0
    ).eval()
    last.load_state_dict(ref.state_dict())
    first.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain, outs_last, outs_first = ref(x), last(x), first(x)
    for a, b in zip(plain[:3], outs_last[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Stage 4 is the plain one, instance-normalised (NumPy, biased var).
    p = plain[3].double().numpy()
    mu = p.mean(axis=(2, 3), keepdims=True)
    var = p.var(axis=(2, 3), keepdims=True)
    expected = (p - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(outs_last[3].numpy(), expected, atol=1e-4)
    # Whitening stage 1 changes what stage 2 sees (inside the encoder).
    assert not torch.allclose(plain[1], outs_first[1], atol=1e-3)


def test_backbone_whitened_outputs_are_standardised():
    model = RDWTMixVisionTransformer(**MIT_B0).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96) * 3 + 1)
    for out in outs:
        mean = out.mean(dim=(2, 3))
        var = out.var(dim=(2, 3), unbiased=False)
        assert mean.abs().max() < 1e-4
        # Channels that are (near) constant get var ~0 through eps.
        assert ((var - 1).abs() < 1e-2).float().mean() > 0.99


def test_backbone_tiny_input_one_pixel_stage_trains():
    # 32 x 32 leaves stage 4 with a single position: F.instance_norm alone
    # refuses that in training mode.
    model = RDWTMixVisionTransformer(**MIT_B0).train()
    outs = model(torch.randn(2, 3, 32, 32))
    assert outs[3].shape == (2, 256, 1, 1)
    loss = RDWTLoss()(outs) + sum(o.sum() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)


def test_mmseg_mit_checkpoint_loads_strictly():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0)
    ours = RDWTMixVisionTransformer(**MIT_B0)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


@pytest.mark.parametrize('stages', [(4,), (-1,), (0, 0), (0, 1, 2, 3, 4)])
def test_backbone_bad_rdwt_stages(stages):
    with pytest.raises(ValueError, match='rdwt_stages'):
        RDWTMixVisionTransformer(rdwt_stages=stages, **MIT_B0)


@pytest.mark.parametrize('pays', [True, False])
def test_auto_attention_hook_follows_the_rule(monkeypatch, pays):
    """'auto' asks fused_attention_pays with the query's device, the
    autocast dtype where autocast is on, and whether dynamo traces; it
    leaves mmseg's call alone where fusing does not pay."""
    from mmseg_dfq.models.utils import attention

    asked = []

    def rule(device, dtype, compiling):
        asked.append((device, dtype, compiling))
        return pays

    monkeypatch.setattr(attention, 'fused_attention_pays', rule)
    model = RDWTMixVisionTransformer(**MIT_B0).eval()
    seen = []
    attn = next(
        m
        for m in model.modules()
        if isinstance(m, torch.nn.MultiheadAttention)
    )
    attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get('need_weights')), with_kwargs=True
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(x)
    assert asked[0] == ('cpu', torch.bfloat16, False)
    assert seen == [False if pays else None]


def test_fused_attention_value_is_checked():
    with pytest.raises(ValueError, match='fused_attention must be True'):
        RDWTMixVisionTransformer(fused_attention='yes', **MIT_B0)
