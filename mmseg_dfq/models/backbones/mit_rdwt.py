"""MiT (SegFormer) encoder with the relaxed deep whitening transformation."""

from functools import partial
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.models.backbones.mit import MixVisionTransformer
from mmseg.models.utils import nlc_to_nchw
from mmseg.registry import MODELS

from ..composition import check_rdwt_composition
from ..utils.attention import check_fused_attention, use_fused_attention
from ..utils.whitening import check_layout, instance_norm


@MODELS.register_module()
class RDWTMixVisionTransformer(MixVisionTransformer):
    """MixVisionTransformer whose stage outputs are instance-normalised.

    After a selected stage's final LayerNorm, its map is normalised per
    sample and group (no affine) and that normalised map is fed both to the
    next stage and to the outputs, as in the authors' network. Adds no
    parameter, so mmseg's MiT checkpoints load unchanged.

    Args:
        rdwt_stages (Sequence[int]): 0-based stages to whiten.
            Default: (0, 1, 2, 3).
        rdwt_eps (float): Instance-norm epsilon. Default: 1e-5.
        rdwt_layout (str): What is normalised: ``'channels'`` (each channel
            over H x W, as the paper's text describes; the default) or
            ``'authors'`` (the published code's reshape of the (B, N, C)
            tokens without a transpose, see
            :mod:`mmseg_dfq.models.utils.whitening`). The RDWT loss must
            use the same layout. Default: 'channels'.
        fused_attention (bool | str): Run the blocks' attention with
            ``need_weights=False``. mmseg's MiT calls
            ``nn.MultiheadAttention`` with its default ``need_weights=True``,
            which computes the attention matrix explicitly (two matmuls and
            a softmax) and averages it over heads for a weights output
            nobody reads; without it torch uses its fused
            ``scaled_dot_product_attention`` kernels. The same attention, to
            rounding (outputs within ~1e-5 of MiT-b2's on CPU, where the
            forward + backward of a B4 @ 256 batch took 4% less time);
            with ``attn_drop_rate`` > 0 the dropout masks differ (another
            kernel draws them). ``'auto'`` fuses except inside
            ``torch.compile`` in float32 on CUDA, where the explicit
            attention compiled faster (the figures:
            :func:`~mmseg_dfq.models.utils.fused_attention_pays`). True
            always fuses, False keeps mmseg's computation. Set at
            construction (it installs forward pre-hooks on the attention
            modules). Default: 'auto'.
        embed_norm_eps (float, optional): Epsilon of the LayerNorms that
            follow a strided convolution: each stage's patch embedding and
            the attention's spatial reduction. SegFormer's code (and so the
            DFQ authors' encoder) leaves those at PyTorch's 1e-5 and sets
            1e-6 elsewhere; mmseg's MiT uses ``norm_cfg``'s 1e-6 for all.
            No weight changes, so checkpoints load either way. None keeps
            ``norm_cfg``'s. Default: None.
        **kwargs: Arguments of :class:`MixVisionTransformer`.
    """

    def __init__(
        self,
        rdwt_stages: Sequence[int] = (0, 1, 2, 3),
        rdwt_eps: float = 1e-5,
        rdwt_layout: str = 'channels',
        fused_attention: Union[bool, str] = 'auto',
        embed_norm_eps: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_norm_eps = embed_norm_eps
        if embed_norm_eps is not None:
            if not float(embed_norm_eps) > 0:
                raise ValueError(
                    'RDWTMixVisionTransformer: embed_norm_eps must be > 0, '
                    f'got {embed_norm_eps}'
                )
            for norm in self._embedding_norms():
                norm.eps = float(embed_norm_eps)
        stages = tuple(int(s) for s in rdwt_stages)
        bad = [s for s in stages if not 0 <= s < self.num_stages]
        if bad or len(set(stages)) != len(stages):
            raise ValueError(
                f'RDWTMixVisionTransformer: rdwt_stages {tuple(rdwt_stages)} '
                f'must be distinct stage indices in [0, {self.num_stages})'
            )
        self.rdwt_stages = stages
        self.rdwt_eps = rdwt_eps
        self.rdwt_layout = check_layout(
            rdwt_layout, 'RDWTMixVisionTransformer'
        )
        self.fused_attention = check_fused_attention(
            fused_attention, 'RDWTMixVisionTransformer'
        )
        if fused_attention:
            hook = partial(
                _without_attention_weights, auto=fused_attention == 'auto'
            )
            for module in self.modules():
                if isinstance(module, nn.MultiheadAttention):
                    module.register_forward_pre_hook(hook, with_kwargs=True)
        check_rdwt_composition(self)

    def _embedding_norms(self) -> list:
        """The LayerNorms after a strided convolution (see embed_norm_eps)."""
        norms = []
        for patch_embed, blocks, _ in self.layers:
            norms.append(patch_embed.norm)
            for block in blocks:
                if hasattr(block.attn, 'sr'):
                    norms.append(block.attn.norm)
        return norms

    def forward(self, x):
        """Forward the stages, whitening the selected stage outputs.

        Args:
            x (Tensor): Images, shape (B, C_in, H, W).

        Returns:
            list[Tensor]: Maps of ``out_indices``, stage i of shape
            (B, C_i, H / 2^(i+2), W / 2^(i+2)).
        """
        outs = []
        for i, layer in enumerate(self.layers):
            x, hw_shape = layer[0](x)
            for block in layer[1]:
                x = block(x, hw_shape)
            x = layer[2](x)
            x = nlc_to_nchw(x, hw_shape)
            if i in self.rdwt_stages:
                # Keep nlc_to_nchw's channels-last layout: on CPU the
                # next convs and the head's bilinear resizes are ~2.5x
                # slower on the contiguous NCHW that instance_norm returns.
                x = instance_norm(x, self.rdwt_eps, self.rdwt_layout)
                x = x.contiguous(memory_format=torch.channels_last)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _without_attention_weights(module, args, kwargs, auto=False):
    """Forward pre-hook: call ``nn.MultiheadAttention`` without weights.

    mmseg's MiT passes query, key and value by keyword and nothing else; a
    caller that asks for the weights (by keyword, or positionally as the
    fifth argument) still gets them. With ``auto``, only where
    :func:`~mmseg_dfq.models.utils.use_fused_attention` says so.
    """
    if len(args) >= 5:
        return args, kwargs
    if auto:
        query = kwargs.get('query', args[0] if args else None)
        if query is not None and not use_fused_attention('auto', query):
            return args, kwargs
    kwargs.setdefault('need_weights', False)
    return args, kwargs
