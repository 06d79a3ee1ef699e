"""DFQ decode head: deep features query the shallow, high-resolution ones."""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ..composition import check_rdwt_composition  # mmsegapi


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
        x = x.transpose(1, 2).reshape(b, -1, hw[0], hw[1])
        x = F.gelu(self.dwconv(x)).flatten(2).transpose(1, 2)
        return self.fc2(x)


class FeatureQueryBlock(BaseModule):
    """Pre-norm cross-attention block: one deep level queries shallow c1.

    Keys and values come from c1 pooled to the query level's grid, then a
    1x1 conv, LayerNorm, GELU and one linear layer to ``2 * query_dims``.

    Args:
        query_dims (int): Channels C_i of the deep (query) level.
        kv_dims (int): Channels C_1 of the shallow level.
        num_heads (int): Attention heads; must divide ``query_dims``.
        mlp_ratio (float): MixFFN expansion. Default: 4.
        drop_path (float): DropPath rate. Default: 0.1.
    """

    def __init__(
        self,
        query_dims: int,
        kv_dims: int,
        num_heads: int,
        mlp_ratio: float = 4,
        drop_path: float = 0.1,
    ):
        super().__init__()
        if query_dims % num_heads:
            raise ValueError(
                f'DFQHead: {num_heads} heads do not divide {query_dims} '
                'query channels'
            )
        self.num_heads = num_heads
        self.kv_conv = nn.Conv2d(kv_dims, kv_dims, 1)
        self.kv_norm = nn.LayerNorm(kv_dims)
        self.kv = nn.Linear(kv_dims, 2 * query_dims)
        self.q_norm = nn.LayerNorm(query_dims)
        self.q = nn.Linear(query_dims, query_dims)
        self.proj = nn.Linear(query_dims, query_dims)
        self.ffn_norm = nn.LayerNorm(query_dims)
        self.ffn = MixFFN(query_dims, int(query_dims * mlp_ratio))
        self.drop_path = (
            DropPath(drop_path) if drop_path > 0 else nn.Identity()
        )

    def forward(
        self, query: torch.Tensor, shallow: torch.Tensor
    ) -> torch.Tensor:
        """Refine a deep level with the shallow one.

        Args:
            query (Tensor): Deep level, (B, C_i, H_i, W_i).
            shallow (Tensor): Shallow level c1, (B, C_1, H_1, W_1).

        Returns:
            Tensor: Refined deep level, (B, C_i, H_i, W_i).
        """
        b, c, h, w = query.shape
        # Average pooling by the stride ratio (2, 4, 8 for MiT); adaptive so
        # non-divisible sizes still land on the query grid.
        kv = F.adaptive_avg_pool2d(shallow, (h, w))
        kv = self.kv_conv(kv).flatten(2).transpose(1, 2)
        kv = self.kv(F.gelu(self.kv_norm(kv)))
        k, v = kv.reshape(
            b, h * w, 2, self.num_heads, c // self.num_heads
        ).permute(2, 0, 3, 1, 4)
        x = query.flatten(2).transpose(1, 2)
        q = (
            self.q(self.q_norm(x))
            .reshape(b, h * w, self.num_heads, c // self.num_heads)
            .transpose(1, 2)
        )
        # scale defaults to head_dim ** -0.5; fused kernels on GPU.
        attn = F.scaled_dot_product_attention(q, k, v)
        attn = attn.transpose(1, 2).reshape(b, h * w, c)
        x = x + self.drop_path(self.proj(attn))
        x = x + self.drop_path(self.ffn(self.ffn_norm(x), (h, w)))
        return x.transpose(1, 2).reshape(b, c, h, w)


@MODELS.register_module()
class DFQHead(BaseDecodeHead):
    """Decoupled feature queries (DFQ, AAAI 2024) decode head.

    The first selected level (c1, stride 4) serves as keys/values; every
    deeper level is a query refined by a :class:`FeatureQueryBlock`. The
    refined levels are resized to c1, concatenated with it (deepest first),
    fused by a 1x1 conv + norm + ReLU to ``channels`` and classified.

    Args:
        num_heads (Sequence[int]): Heads per deep level, shallow to deep.
            Default: (2, 5, 8).
        mlp_ratio (float): MixFFN expansion. Default: 4.
        drop_path_rate (float): DropPath of the blocks. Default: 0.1.
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
        **kwargs: :class:`BaseDecodeHead` arguments (``in_channels``,
            ``in_index``, ``channels`` (768 in DFQ), ``num_classes``...).
    """

    def __init__(
        self,
        num_heads: Sequence[int] = (2, 5, 8),
        mlp_ratio: float = 4,
        drop_path_rate: float = 0.1,
        loss_rdwt: Optional[dict] = None,
        rdwt_in_index: Optional[Sequence[int]] = None,
        fuse_at_level_resolution: bool = True,
        **kwargs,
    ):
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
        c1 = self.in_channels[0]
        self.blocks = nn.ModuleList(
            FeatureQueryBlock(c, c1, h, mlp_ratio, drop_path_rate)
            for c, h in zip(self.in_channels[1:], num_heads)
        )
        self.fusion_conv = ConvModule(
            sum(self.in_channels),
            self.channels,
            1,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
        )
        self.fuse_at_level_resolution = fuse_at_level_resolution
        self.loss_rdwt = None if loss_rdwt is None else MODELS.build(loss_rdwt)
        self.rdwt_in_index = (
            None if rdwt_in_index is None else list(rdwt_in_index)
        )
        check_rdwt_composition(self)  # composition check (mmsegapi)

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
                    resize(
                        x,
                        size,
                        mode='bilinear',
                        align_corners=self.align_corners,
                    )
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
                y = resize(
                    y, size, mode='bilinear', align_corners=self.align_corners
                )
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
