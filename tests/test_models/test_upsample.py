"""bilinear_resize / upsample_by_slices against torch's bilinear kernel."""

import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmseg_dfq.models.utils import bilinear_resize, upsample_by_slices


@pytest.mark.parametrize(
    'shape, factors',
    [
        ((2, 3, 8, 8), (8, 8)),  # the head's deepest level at 256 px
        ((2, 3, 5, 7), (2, 4)),
        ((1, 4, 16, 3), (4, 3)),  # odd factor: a phase on the pixel
        ((1, 2, 1, 1), (4, 4)),  # one pixel: every tap clamped
        ((2, 2, 6, 4), (1, 2)),  # one axis kept
    ],
)
@pytest.mark.parametrize('channels_last', [False, True])
def test_slices_equal_torch_bilinear(shape, factors, channels_last):
    """Forward and backward equal F.interpolate(align_corners=False) in
    float64, where rounding cannot hide a wrong tap or weight."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    size = (shape[2] * factors[0], shape[3] * factors[1])
    ref = F.interpolate(x, size, mode='bilinear', align_corners=False)
    out = upsample_by_slices(x, *factors)
    assert out.shape == ref.shape
    # torch's memory format too (channels-last in, channels-last out).
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    grad = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    (g_out,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    'in_size, size, align_corners',
    [
        ((8, 8), (64, 64), False),  # integer factor
        ((8, 8), (64, 64), True),
        ((7, 9), (20, 30), False),  # fractional factor
        ((32, 32), (16, 16), False),  # downsampling
    ],
)
def test_outside_compile_it_is_torch_bilinear(in_size, size, align_corners):
    """Eager callers get torch's single kernel, bit for bit."""
    x = torch.randn(2, 3, *in_size)
    out = bilinear_resize(x, size, align_corners)
    ref = F.interpolate(x, size, mode='bilinear', align_corners=align_corners)
    assert torch.equal(out, ref)


@pytest.mark.parametrize('channels_last', [False, True])
def test_compiled_resize_keeps_torchs_memory_format(channels_last):
    """Under torch.compile (the slice path), the output has the strides
    of F.interpolate's for the same input."""
    x = torch.randn(2, 8, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.interpolate(x, (16, 16), mode='bilinear', align_corners=False)
    compiled = torch.compile(
        lambda t: bilinear_resize(t, (16, 16)), backend='aot_eager'
    )
    out = compiled(x)
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_a_traced_dfq_model_takes_other_sizes():
    # torch.jit.trace records the sizes the model computes from its input;
    # turning them into Python ints would fix the traced model's size.
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmseg_dfq  # noqa: F401  (registers the plugin)

    init_default_scope('mmseg')
    cfg = Config.fromfile(
        osp.join(
            osp.dirname(__file__),
            '..',
            '..',
            'configs',
            'dfq',
            'dfq_mit-tiny_demo_fundus.py',
        )
    )
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, mode='tensor')

    wrapped = Logits()
    torch.manual_seed(0)
    with torch.no_grad():
        traced = torch.jit.trace(
            wrapped, torch.randn(1, 3, 64, 64), check_trace=False
        )
        x = torch.randn(1, 3, 96, 96)
        torch.testing.assert_close(traced(x), wrapped(x))
