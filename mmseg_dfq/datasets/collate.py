"""A collate function that hands the main process whole-batch tensors.

mmengine's default ``pseudo_collate`` keeps a batch of B samples as B image
tensors and B data samples, each with its own mask tensor. A DataLoader
worker sends every tensor to the main process through its own
shared-memory segment and file descriptor, and the pin-memory thread pins
each of them, so the main process does 2B tensor transfers per batch.
:func:`stack_seg_collate` stacks the images into one (B, C, H, W) tensor
and the masks into one (B, 1, H, W) tensor when their shapes agree, which
makes that two transfers (receiving a B16 batch of the fast config's
256 px fundus crops from a worker took the main process 13.8 ms with
``pseudo_collate`` and 8.2 ms stacked, median of 20, on a 2-core CPU:
``tools/benchmark.py --loader``).

The result is what any mmseg data preprocessor accepts: ``inputs`` is a
batch tensor (which iterates as its images) and every sample keeps its
``gt_sem_seg``, now a view of the stacked masks.
:class:`~mmseg_dfq.models.data_preprocessors.BatchSegDataPreProcessor`
then moves and normalises the batch in a few whole-batch operations.
"""

from typing import Any, Sequence

import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from mmengine.structures import BaseDataElement, PixelData


def tensors_agree(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the tensors share one shape, dtype and device (stackable)."""
    first = tensors[0]
    return all(
        t.shape == first.shape
        and t.dtype == first.dtype
        and t.device == first.device
        for t in tensors[1:]
    )


def _stack_masks(samples: Sequence[BaseDataElement]) -> None:
    """Make every sample's ``gt_sem_seg`` a view of one stacked tensor."""
    fields = [s.get('gt_sem_seg') for s in samples]
    if not all(isinstance(f, PixelData) and 'data' in f for f in fields):
        return
    masks = [f.data for f in fields]
    if not tensors_agree(masks):
        return
    stacked = torch.stack(masks)
    for field, view in zip(fields, stacked):
        field.data = view


@FUNCTIONS.register_module()
def stack_seg_collate(data_batch: Sequence) -> Any:
    """``pseudo_collate`` with the images and masks stacked when they agree.

    Use it as ``collate_fn=dict(type='stack_seg_collate')`` in a dataloader
    config. For a batch of dicts as mmseg's packing transforms produce them
    (``inputs`` a tensor, ``data_samples`` a ``SegDataSample``):

    - ``inputs`` becomes one tensor of shape (B, C, H, W) if every image has
      the same shape and dtype, else it stays a list (as
      ``pseudo_collate`` leaves it; validation images may differ in size);
    - if every sample's ``gt_sem_seg`` has the same shape and dtype, the
      masks are stacked into one tensor and each sample's
      ``gt_sem_seg.data`` becomes its slice of it (same values).

    Everything else is collated by ``pseudo_collate``.

    Args:
        data_batch (Sequence): The samples of one batch.

    Returns:
        Any: The collated batch.
    """
    batch = pseudo_collate(data_batch)
    if not isinstance(batch, dict):
        return batch
    inputs = batch.get('inputs')
    if (
        isinstance(inputs, list)
        and inputs
        and all(isinstance(x, torch.Tensor) for x in inputs)
        and tensors_agree(inputs)
    ):
        batch['inputs'] = torch.stack(inputs)
    samples = batch.get('data_samples')
    if (
        isinstance(samples, list)
        and samples
        and all(isinstance(s, BaseDataElement) for s in samples)
    ):
        _stack_masks(samples)
    return batch
