"""BatchNorm over chunks of the batch, as under torch's DataParallel."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn


@MODELS.register_module('ChunkBN')
class ChunkBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that sees the batch as ``DataParallel`` replicas do.

    ``nn.DataParallel`` on G GPUs cuts each batch into ``batch.chunk(G)``
    and runs a replica of the model on each piece: in training every
    BatchNorm normalises each piece with that piece's own statistics, and
    only the first replica's running statistics are kept (its buffers are
    the module's own; the others are copies that are dropped). The DFQ
    authors trained this way on two GPUs, with the source domains
    concatenated in order, so each half of their batch held other domains.
    This layer does the same on one device: with ``num_chunks`` chunks, in
    training mode, chunk 0 goes through ``BatchNorm2d`` (and updates the
    running statistics as it would), the others are normalised with their
    own statistics and update nothing. In eval mode it is ``BatchNorm2d``.
    The parameters and buffers are ``BatchNorm2d``'s, so checkpoints load
    either way; mmcv's ``build_norm_layer`` names it ``bn``, as BN.

    Use it as ``norm_cfg=dict(type='ChunkBN', num_chunks=2)``, on one
    process: under DDP each rank already holds a part of the batch, so
    training with more than one process is refused (and
    ``SyncBatchNorm.convert_sync_batchnorm`` would turn it into a plain
    ``SyncBatchNorm``).

    Args:
        num_features (int): Channels.
        num_chunks (int): Pieces of the batch, the DataParallel GPU count.
            Default: 2.
        **kwargs: :class:`torch.nn.BatchNorm2d` arguments.
    """

    def __init__(self, num_features: int, num_chunks: int = 2, **kwargs):
        super().__init__(num_features, **kwargs)
        if isinstance(num_chunks, bool) or not (
            isinstance(num_chunks, int) and num_chunks >= 1
        ):
            raise ValueError(
                f'ChunkBN: num_chunks must be an int >= 1, got {num_chunks!r}'
            )
        self.num_chunks = num_chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each chunk of the batch on its own (training).

        Args:
            x (Tensor): (B, C, H, W).

        Returns:
            Tensor: The normalised batch, in the given order.
        """
        if not self.training or self.num_chunks == 1 or x.shape[0] < 2:
            return super().forward(x)
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() > 1:
                raise RuntimeError(
                    'ChunkBN emulates DataParallel in one process; with '
                    f'{dist.get_world_size()} processes each already holds '
                    "a part of the batch: use norm_cfg=dict(type='BN') or "
                    "'SyncBN'"
                )
        chunks = x.chunk(self.num_chunks)
        outs = [super().forward(chunks[0])]
        for chunk in chunks[1:]:
            outs.append(
                F.batch_norm(
                    chunk,
                    None,
                    None,
                    self.weight,
                    self.bias,
                    True,
                    0.0,
                    self.eps,
                )
            )
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_chunks={self.num_chunks}'
