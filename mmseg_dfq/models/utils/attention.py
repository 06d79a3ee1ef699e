"""Which attention kernel: torch's fused one, or the explicit matmuls."""

from typing import Union

import torch
import torch.nn.functional as F

from .tracing import compute_dtype, is_compiling


def check_fused_attention(value, owner: str) -> Union[bool, str]:
    """Validate a ``fused_attention`` argument (True, False or 'auto')."""
    if value is True or value is False or value == 'auto':
        return value
    raise ValueError(
        f"{owner}: fused_attention must be True, False or 'auto', got "
        f'{value!r}'
    )


def fused_attention_pays(device_type: str, dtype, compiling: bool) -> bool:
    """``fused_attention='auto'``: whether torch's fused kernels are used.

    Everywhere except compiled float32 on CUDA. There torch's fused
    float32 kernels (``fmha_cutlass*_f32``) run without tensor cores, while
    inductor turns the explicit attention into TF32 matmuls (the fast path
    turns TF32 on; with TF32 off, prefer ``fused_attention=True``) and one
    softmax kernel. Measured on an H200 (MiT-b2 DFQ fast-path train step,
    B16 @ 256): with the MiT's attention explicit and the head's fused,
    26.0 ms; with both fused (and other changes in between), 30.4 ms, of
    whose device time the fused float32 kernels took 5.8 ms. The head's
    attention under this rule (explicit there too) is not measured yet. In
    bf16 / fp16 the fused kernel is flash attention.

    Args:
        device_type (str): The query's device type.
        dtype (torch.dtype): The dtype the attention computes in (the
            autocast dtype where autocast is on).
        compiling (bool): Whether ``torch.compile`` is tracing.
    """
    return not (compiling and device_type == 'cuda' and dtype == torch.float32)


def use_fused_attention(mode: Union[bool, str], x: torch.Tensor) -> bool:
    """Resolve ``fused_attention`` (True, False or 'auto') for input ``x``."""
    if mode != 'auto':
        return bool(mode)
    return fused_attention_pays(
        x.device.type, compute_dtype(x), is_compiling()
    )


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fused: Union[bool, str] = 'auto',
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors.

    ``F.scaled_dot_product_attention`` where :func:`use_fused_attention`
    says so, else the explicit form (two matmuls and a softmax, in the DFQ
    authors' order: scores, then the scale). The same attention, to
    rounding (no dropout, no mask).
    """
    if use_fused_attention(fused, q):
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1) @ v
