"""The attention kernel choice (models/utils/attention.py) and its users."""

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from mmseg_dfq.models.utils import (
    attention,
    check_fused_attention,
    fused_attention_pays,
    scaled_dot_product,
    use_fused_attention,
)


def test_auto_fuses_except_compiled_float32_on_cuda():
    for device in ('cpu', 'cuda'):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert fused_attention_pays(device, dtype, compiling=False)
    assert fused_attention_pays('cpu', torch.float32, compiling=True)
    assert fused_attention_pays('cuda', torch.bfloat16, compiling=True)
    assert not fused_attention_pays('cuda', torch.float32, compiling=True)


def test_explicit_and_fused_are_the_same_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64) for _ in range(3))
    fused = scaled_dot_product(q, k, v, True)
    explicit = scaled_dot_product(q, k, v, False)
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-14)
    # Independent reference: the definition, in NumPy-free torch ops.
    weights = torch.exp(q @ k.transpose(-2, -1) / 8**0.5)
    ref = (weights / weights.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(explicit, ref, rtol=0, atol=1e-14)


def test_auto_resolves_with_the_autocast_dtype(monkeypatch):
    asked = []
    monkeypatch.setattr(
        attention,
        'fused_attention_pays',
        lambda *a: asked.append(a) or False,
    )
    x = torch.randn(2, 2)
    assert use_fused_attention(True, x) and not use_fused_attention(False, x)
    assert asked == []
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not use_fused_attention('auto', x)
    assert not use_fused_attention('auto', x)
    assert asked == [
        ('cpu', torch.bfloat16, False),
        ('cpu', torch.float32, False),
    ]


def test_fused_attention_values_are_checked():
    for value in (True, False, 'auto'):
        assert check_fused_attention(value, 'X') == value
    for value in ('yes', 1, None):
        with pytest.raises(ValueError, match='X: fused_attention must be'):
            check_fused_attention(value, 'X')


def _head(fused_attention):
    import mmseg_dfq  # noqa: F401

    return MODELS.build(
        dict(
            type='DFQHead',
            in_channels=[8, 16, 16],
            in_index=[0, 1, 2],
            channels=16,
            num_heads=[1, 2],
            num_classes=2,
            drop_path_rate=0.0,
            fused_attention=fused_attention,
        )
    )


@pytest.mark.parametrize('mode', [True, 'auto'])
def test_head_blocks_use_the_chosen_kernel(monkeypatch, mode):
    """DFQHead passes fused_attention to its blocks; False takes the
    explicit path, and every choice gives the same outputs and gradients
    (float64)."""
    torch.manual_seed(0)
    explicit = _head(False).double()
    other = _head(mode).double()
    other.load_state_dict(explicit.state_dict())
    feats = [
        torch.randn(2, c, s, s, dtype=torch.float64)
        for c, s in ((8, 16), (16, 8), (16, 4))
    ]
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F,
        'scaled_dot_product_attention',
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    outs, grads = [], []
    for head in (explicit, other):
        calls.clear()
        out = head(feats)
        out.square().sum().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in head.parameters()]))
        # Two deep levels: two blocks, one attention each.
        assert len(calls) == (0 if head is explicit else 2)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match='DFQHead: fused_attention'):
        _head('always')
