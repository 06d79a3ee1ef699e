"""DFQ decode head: deep features query the shallow, high-resolution ones."""

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import (
    BaseModule,
    constant_init,
    normal_init,
    trunc_normal_init,
)
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from ..composition import check_rdwt_composition
from ..utils import (
    bilinear_resize,
    check_fused_attention,
    pixel_accuracy,
    scaled_dot_product,
)


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> Linear on (B, N, C) tokens.

    Args:
        dims (int): Token channels C.
        hidden_dims (int): Hidden channels (4 C in DFQ).
    """

    def __init__(self, dims: int, hidden_dims: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden_dims)
        self.dwconv = nn.Conv2d(
            hidden_dims, hidden_dims, 3, padding=1, groups=hidden_dims
        )
        self.fc2 = nn.Linear(hidden_dims, dims)

    def forward(self, x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
        """Args: x (Tensor): (B, H*W, C); hw: (H, W). Returns (B, H*W, C)."""
        b, n, _ = x.shape
        x = self.fc1(x)
        # Token-major (B, H, W, C) viewed as NCHW: channels-last, no copy.
        x = x.reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2)
        x = F.gelu(self.dwconv(x)).permute(0, 2, 3, 1).reshape(b, n, -1)
        return self.fc2(x)


class FeatureQueryBlock(BaseModule):
    """Pre-norm cross-attention block: one deep level queries shallow c1.

    The authors' ``Block_feed``: three LayerNorms (the query tokens, the c1
    tokens before pooling, and before the MixFFN); keys and values come from
    the normalised c1, average-pooled to the query level's grid, then a 1x1
    conv, LayerNorm, GELU and one linear layer (no bias) to
    ``2 * query_dims``; the query linear layer has no bias either, the
    output projection has one.

    Parameter names and their counterparts in the authors' ``Block_feed``
    (``attn_c{i}_c1`` of ``FeedFormerHead``): ``q_norm`` = ``norm1``,
    ``shallow_norm`` = ``norm2``, ``ffn_norm`` = ``norm3``, ``q`` =
    ``attn.q``, ``kv`` = ``attn.kv``, ``proj`` = ``attn.proj``,
    ``kv_conv`` = ``attn.sr``, ``kv_norm`` = ``attn.norm``, ``ffn.fc1`` /
    ``ffn.dwconv`` / ``ffn.fc2`` = ``mlp.fc1`` / ``mlp.dwconv.dwconv`` /
    ``mlp.fc2``.

    Args:
        query_dims (int): Channels C_i of the deep (query) level.
        kv_dims (int): Channels C_1 of the shallow level.
        num_heads (int): Attention heads; must divide ``query_dims``.
        mlp_ratio (float): MixFFN expansion. Default: 4.
        drop_path (float): DropPath rate. Default: 0.1.
        pool_ratio (int, optional): Pool c1 with a fixed average pooling of
            this kernel and stride, as the authors (2, 4, 8 for c2, c3, c4);
            None pools adaptively to the query grid, which equals the fixed
            pooling when the sizes divide and also matches the grids when
            they do not. Default: None.
        fused_attention (bool | str): torch's fused attention kernel (True),
            the authors' explicit matmuls and softmax (False), or 'auto'
            (fused except compiled float32 on CUDA, see
            :func:`~mmseg_dfq.models.utils.fused_attention_pays`); the same
            attention to rounding. Default: 'auto'.
    """

    def __init__(
        self,
        query_dims: int,
        kv_dims: int,
        num_heads: int,
        mlp_ratio: float = 4,
        drop_path: float = 0.1,
        pool_ratio: Optional[int] = None,
        fused_attention: Union[bool, str] = 'auto',
    ):
        super().__init__()
        if query_dims % num_heads:
            raise ValueError(
                f'DFQHead: {num_heads} heads do not divide {query_dims} '
                'query channels'
            )
        if pool_ratio is not None and int(pool_ratio) < 1:
            raise ValueError(
                f'DFQHead: pool ratio must be >= 1, got {pool_ratio}'
            )
        self.num_heads = num_heads
        self.pool_ratio = None if pool_ratio is None else int(pool_ratio)
        self.fused_attention = check_fused_attention(
            fused_attention, 'DFQHead'
        )
        self.q_norm = nn.LayerNorm(query_dims)
        self.shallow_norm = nn.LayerNorm(kv_dims)
        self.kv_conv = nn.Conv2d(kv_dims, kv_dims, 1)
        self.kv_norm = nn.LayerNorm(kv_dims)
        self.kv = nn.Linear(kv_dims, 2 * query_dims, bias=False)
        self.q = nn.Linear(query_dims, query_dims, bias=False)
        self.proj = nn.Linear(query_dims, query_dims)
        self.ffn_norm = nn.LayerNorm(query_dims)
        self.ffn = MixFFN(query_dims, int(query_dims * mlp_ratio))
        self.drop_path = (
            DropPath(drop_path) if drop_path > 0 else nn.Identity()
        )
        self.init_weights()

    def init_weights(self):
        """The authors' initialisation (SegFormer's).

        Linear: truncated normal (std 0.02), zero bias; LayerNorm: (1, 0);
        Conv2d: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out / groups,
        zero bias.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=0.02, bias=0.0)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.0)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1]
                fan_out = fan_out * m.out_channels // m.groups
                normal_init(m, mean=0.0, std=math.sqrt(2.0 / fan_out))

    def forward(
        self, query: torch.Tensor, shallow: torch.Tensor
    ) -> torch.Tensor:
        """Refine a deep level with the shallow one.

        Args:
            query (Tensor): Deep level, (B, C_i, H_i, W_i).
            shallow (Tensor): Shallow level c1, (B, C_1, H_1, W_1).

        Returns:
            Tensor: Refined deep level, (B, C_i, H_i, W_i) (channels-last
            memory).
        """
        b, c, h, w = query.shape
        # LayerNorm over channels on the (B, H, W, C) view (no copy for the
        # channels-last maps of the RDWT backbone), back to NCHW to pool.
        kv = self.shallow_norm(shallow.permute(0, 2, 3, 1))
        kv = kv.permute(0, 3, 1, 2)
        if self.pool_ratio is None:
            kv = F.adaptive_avg_pool2d(kv, (h, w))
        else:
            kv = F.avg_pool2d(kv, self.pool_ratio, self.pool_ratio)
        kv = self.kv_conv(kv)
        n_kv = kv.shape[2] * kv.shape[3]
        kv = kv.permute(0, 2, 3, 1).reshape(b, n_kv, -1)
        kv = self.kv(F.gelu(self.kv_norm(kv)))
        k, v = kv.reshape(
            b, n_kv, 2, self.num_heads, c // self.num_heads
        ).permute(2, 0, 3, 1, 4)
        x = query.permute(0, 2, 3, 1).reshape(b, h * w, c)
        q = (
            self.q(self.q_norm(x))
            .reshape(b, h * w, self.num_heads, c // self.num_heads)
            .transpose(1, 2)
        )
        attn = scaled_dot_product(q, k, v, self.fused_attention)
        attn = attn.transpose(1, 2).reshape(b, h * w, c)
        x = x + self.drop_path(self.proj(attn))
        x = x + self.drop_path(self.ffn(self.ffn_norm(x), (h, w)))
        return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


@MODELS.register_module()
class DFQHead(BaseDecodeHead):
    """Decoupled feature queries (DFQ, AAAI 2024) decode head.

    The first selected level (c1, stride 4) serves as keys/values; every
    deeper level is a query refined by a :class:`FeatureQueryBlock`. The
    refined levels are resized to c1, concatenated with it (deepest first),
    fused by a 1x1 conv + norm + ReLU to ``channels`` and classified. With
    the defaults this is the authors' ``FeedFormerHead`` (no dropout before
    the classifier: ``dropout_ratio`` defaults to 0 here).

    State-dict mapping to the authors' head (see
    :func:`mmseg_dfq.models.convert.convert_authors_head`):
    ``blocks.{0,1,2}.*`` = ``attn_c{2,3,4}_c1.*`` (names inside a block in
    :class:`FeatureQueryBlock`), ``fusion_conv.conv`` / ``fusion_conv.bn``
    = ``linear_fuse.conv`` / ``linear_fuse.bn``, ``conv_seg`` =
    ``linear_pred``.

    Args:
        num_heads (Sequence[int]): Heads per deep level, shallow to deep.
            Default: (2, 5, 8).
        mlp_ratio (float): MixFFN expansion. Default: 4.
        drop_path_rate (float): DropPath of the blocks. Default: 0.1.
        pool_ratios (Sequence[int], optional): Fixed average-pooling ratio
            of c1 per deep level, as the authors' (2, 4, 8); None pools c1
            adaptively to each query grid (the same on sizes divisible by
            32, and one key per query cell on the others). Default: None.
        loss_rdwt (dict, optional): Config of an ``RDWTLoss`` computed on the
            features the head receives; None disables it (the "+DFQHead"
            ablation). Default: None.
        rdwt_in_index (Sequence[int], optional): Which of the received
            levels (indices into the backbone outputs) the RDWT loss sees;
            None means all of them. Default: None.
        fuse_at_level_resolution (bool): Apply each level's slice of the
            1x1 fusion conv at that level's resolution before resizing (the
            same result, since both are linear, for less arithmetic).
            Default: True.
        fused_attention (bool | str): Attention kernel of the blocks, see
            :class:`FeatureQueryBlock`. Default: 'auto'.
        resize_probabilities (str, optional): ``'sigmoid'`` or
            ``'softmax'``: the training losses see the probabilities
            resized to the labels, as the DFQ authors compute theirs
            (sigmoid / softmax first, then the bilinear resize), instead of
            mmseg's resized logits. The resized probabilities p are handed
            to the unchanged loss terms as logits that give them back
            (``log p - log(1 - p)`` for sigmoid, ``log p`` for softmax; p
            kept in [1e-7, 1 - 1e-7]). None: mmseg's order. Default: None.
        probability_losses (Sequence[str], optional): The ``loss_name`` of
            the terms that see the resized probabilities; the others get
            the resized logits. None: every term (the authors' fundus BCE
            and Dice); their prostate loss resizes the logits for the
            cross-entropy and the probabilities for the Dice
            (``('loss_dice',)``). Default: None.
        **kwargs: :class:`BaseDecodeHead` arguments (``in_channels``,
            ``in_index``, ``channels`` (768 in DFQ), ``num_classes``,
            ``dropout_ratio`` (default 0 here)...).
    """

    def __init__(
        self,
        num_heads: Sequence[int] = (2, 5, 8),
        mlp_ratio: float = 4,
        drop_path_rate: float = 0.1,
        pool_ratios: Optional[Sequence[int]] = None,
        loss_rdwt: Optional[dict] = None,
        rdwt_in_index: Optional[Sequence[int]] = None,
        fuse_at_level_resolution: bool = True,
        fused_attention: Union[bool, str] = 'auto',
        resize_probabilities: Optional[str] = None,
        probability_losses: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        if resize_probabilities not in (None, 'sigmoid', 'softmax'):
            raise ValueError(
                "DFQHead: resize_probabilities must be None, 'sigmoid' or "
                f"'softmax', got {resize_probabilities!r}"
            )
        self.resize_probabilities = resize_probabilities
        self.probability_losses = (
            None if probability_losses is None else tuple(probability_losses)
        )
        if self.probability_losses is not None and (
            resize_probabilities is None or not self.probability_losses
        ):
            raise ValueError(
                'DFQHead: probability_losses names the loss terms that see '
                'the resized probabilities: give resize_probabilities and '
                f'at least one name, got {probability_losses!r}'
            )
        # The authors' head has no dropout before the classifier.
        kwargs.setdefault('dropout_ratio', 0.0)
        super().__init__(input_transform='multiple_select', **kwargs)
        levels = len(self.in_channels)
        if levels < 2:
            raise ValueError(
                'DFQHead needs at least two levels (one query '
                f'level and c1), got in_channels '
                f'{self.in_channels}'
            )
        if len(num_heads) != levels - 1:
            raise ValueError(
                f'DFQHead: num_heads {tuple(num_heads)} must give one count '
                f'per deep level ({levels - 1} for in_channels '
                f'{self.in_channels})'
            )
        if pool_ratios is not None and len(pool_ratios) != levels - 1:
            raise ValueError(
                f'DFQHead: pool_ratios {tuple(pool_ratios)} must give one '
                f'ratio per deep level ({levels - 1} for in_channels '
                f'{self.in_channels})'
            )
        ratios = pool_ratios or [None] * (levels - 1)
        c1 = self.in_channels[0]
        self.blocks = nn.ModuleList(
            FeatureQueryBlock(
                c, c1, h, mlp_ratio, drop_path_rate, r, fused_attention
            )
            for c, h, r in zip(self.in_channels[1:], num_heads, ratios)
        )
        self.fusion_conv = ConvModule(
            sum(self.in_channels),
            self.channels,
            1,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
        )
        if self.probability_losses is not None:
            names = [term.loss_name for term in self._loss_terms()]
            unknown = sorted(set(self.probability_losses) - set(names))
            if unknown:
                raise ValueError(
                    f'DFQHead: probability_losses {unknown} name no loss '
                    f'term (the terms: {names})'
                )
        self.fuse_at_level_resolution = fuse_at_level_resolution
        self.loss_rdwt = None if loss_rdwt is None else MODELS.build(loss_rdwt)
        self.rdwt_in_index = (
            None if rdwt_in_index is None else list(rdwt_in_index)
        )
        check_rdwt_composition(self)

    def _check_inputs(self, inputs):
        if len(inputs) <= max(self.in_index):
            raise ValueError(
                f'DFQHead: in_index {self.in_index} needs at least '
                f'{max(self.in_index) + 1} input levels, got {len(inputs)}'
            )
        for i, c in zip(self.in_index, self.in_channels):
            if inputs[i].shape[1] != c:
                raise ValueError(
                    f'DFQHead: input level {i} has {inputs[i].shape[1]} '
                    f'channels but in_channels says {c}'
                )

    def _fuse(self, levels):
        """1x1 fusion of [deepest, ..., c2', c1] at c1's resolution."""
        size = levels[0].shape[2:]
        ordered = levels[::-1]
        if not self.fuse_at_level_resolution:
            x = torch.cat(
                [
                    bilinear_resize(x, size, self.align_corners)
                    for x in ordered
                ],
                dim=1,
            )
            return self.fusion_conv(x)
        conv = self.fusion_conv.conv
        weights = torch.split(conv.weight, [x.shape[1] for x in ordered], 1)
        out = 0
        for x, w in zip(ordered, weights):
            y = F.conv2d(x, w)
            if y.shape[2:] != size:
                y = bilinear_resize(y, size, self.align_corners)
            out = out + y
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1, 1)
        if self.fusion_conv.with_norm:
            out = self.fusion_conv.norm(out)
        if self.fusion_conv.with_activation:
            out = self.fusion_conv.activate(out)
        return out

    def forward(self, inputs):
        """Segment from multi-level features.

        Args:
            inputs (Sequence[Tensor]): Backbone (or neck) levels; level i of
                ``in_index`` has shape (B, in_channels[i], H_i, W_i).

        Returns:
            Tensor: Logits, (B, num_classes, H_1, W_1).
        """
        self._check_inputs(inputs)
        feats = self._transform_inputs(inputs)
        shallow = feats[0]
        refined = [shallow] + [
            block(x, shallow) for block, x in zip(self.blocks, feats[1:])
        ]
        return self.cls_seg(self._fuse(refined))

    def _loss_terms(self) -> list:
        """The ``loss_decode`` terms as a list (one config or several)."""
        if isinstance(self.loss_decode, nn.ModuleList):
            return list(self.loss_decode)
        return [self.loss_decode]

    def loss_by_feat(self, seg_logits, batch_data_samples) -> dict:
        """mmseg's segmentation losses; ``acc_seg`` without a host sync.

        The same steps as ``BaseDecodeHead.loss_by_feat`` (logits resized
        to the labels, or probabilities with ``resize_probabilities``,
        optional pixel sampler, every ``loss_decode`` term summed by
        name), except that the logged ``acc_seg`` comes from
        :func:`~mmseg_dfq.models.utils.pixel_accuracy`: mmseg's
        ``accuracy`` makes the host wait for the GPU twice per step, which
        stalls the queue of a compiled / CUDA-graph step.
        """
        seg_label = self._stack_batch_gt(batch_data_samples)
        size = seg_label.shape[2:]
        from_probs = None
        if self.resize_probabilities is not None:
            from_probs = _resized_as_probabilities(
                seg_logits, size, self.align_corners, self.resize_probabilities
            )
        if self.resize_probabilities is None or self.probability_losses:
            seg_logits = bilinear_resize(seg_logits, size, self.align_corners)
        else:
            seg_logits = from_probs
        seg_weight = (
            None
            if self.sampler is None
            else self.sampler.sample(seg_logits, seg_label)
        )
        seg_label = seg_label.squeeze(1)
        losses = dict()
        for term in self._loss_terms():
            uses_probs = (
                self.probability_losses is not None
                and term.loss_name in self.probability_losses
            )
            value = term(
                from_probs if uses_probs else seg_logits,
                seg_label,
                weight=seg_weight,
                ignore_index=self.ignore_index,
            )
            name = term.loss_name
            losses[name] = losses[name] + value if name in losses else value
        losses['acc_seg'] = pixel_accuracy(
            seg_logits, seg_label, self.ignore_index
        )
        return losses

    def loss(self, inputs, batch_data_samples, train_cfg):
        """Segmentation losses plus, if configured, ``loss_rdwt``."""
        losses = super().loss(inputs, batch_data_samples, train_cfg)
        if self.loss_rdwt is not None:
            index = (
                range(len(inputs))
                if self.rdwt_in_index is None
                else self.rdwt_in_index
            )
            losses[self.loss_rdwt.loss_name] = self.loss_rdwt(
                [inputs[i] for i in index]
            )
        return losses


def _resized_as_probabilities(
    logits: torch.Tensor, size, align_corners: bool, kind: str
) -> torch.Tensor:
    """Logits whose sigmoid / softmax are the probabilities resized.

    Args:
        logits (Tensor): (B, C, h, w) head output.
        size (tuple): The labels' (H, W).
        align_corners (bool): Of the bilinear resize.
        kind (str): ``'sigmoid'`` (independent channels) or ``'softmax'``.

    Returns:
        Tensor: (B, C, H, W) ``logit(p)`` or ``log(p)`` of the resized
        probabilities p.
    """
    eps = 1e-7
    if kind == 'sigmoid':
        p = bilinear_resize(logits.sigmoid(), size, align_corners)
        p = p.clamp(eps, 1 - eps)
        return torch.log(p) - torch.log1p(-p)
    p = bilinear_resize(logits.softmax(dim=1), size, align_corners)
    return p.clamp_min(eps).log()
