"""What a forward pass runs under: torch.compile tracing, autocast.

Version-tolerant readers for the kernel choices of
:mod:`~mmseg_dfq.models.utils.attention` and
:mod:`~mmseg_dfq.models.utils.upsample` (the public APIs moved between
torch 2.0 and 2.4).
"""

import torch


def is_compiling() -> bool:
    """Whether ``torch.compile`` (dynamo) is tracing the caller."""
    compiler = getattr(torch, 'compiler', None)
    check = getattr(compiler, 'is_compiling', None)
    if check is None:  # torch < 2.3
        check = getattr(getattr(torch, '_dynamo', None), 'is_compiling', None)
    return bool(check()) if check is not None else False


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` computes in: autocast's, where it is on."""
    device = x.device.type
    if device not in ('cuda', 'cpu'):
        return x.dtype
    if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return x.dtype
    if device == 'cuda' and torch.is_autocast_enabled():
        return torch.get_autocast_gpu_dtype()
    if device == 'cpu' and torch.is_autocast_cpu_enabled():
        return torch.get_autocast_cpu_dtype()
    return x.dtype
