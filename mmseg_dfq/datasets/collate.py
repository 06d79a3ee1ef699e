"""A collate function that hands the main process whole-batch tensors.

mmengine's default ``pseudo_collate`` keeps a batch of B samples as B image
tensors and B data samples, each with its own mask tensor. A DataLoader
worker sends every tensor to the main process through its own
shared-memory segment and file descriptor; with ``pin_memory=True`` the
pin-memory thread then pins each image (the masks, inside data samples,
it leaves in pageable memory). :func:`stack_seg_collate` stacks the images
into one (B, C, H, W) tensor and the masks into one (B, 1, H, W) tensor
when their shapes agree, so the main process receives and pins two
tensors per batch (figures: ``tools/benchmark.py --loader``, and the
README's fast-path section).

The result is what any mmseg data preprocessor accepts: ``inputs`` is a
batch tensor (which iterates as its images) and every sample keeps its
``gt_sem_seg``, now a view of the stacked masks.
:class:`~mmseg_dfq.models.data_preprocessors.BatchSegDataPreProcessor`
then moves and normalises the batch in a few whole-batch operations.
"""

from typing import Any, Optional, Sequence

import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from mmengine.structures import BaseDataElement, PixelData

# The batch key under which stack_seg_collate also hands over the stacked
# masks: the DataLoader's pin-memory thread pins the tensors of a batch dict
# (not those inside data samples), so BatchSegDataPreProcessor can copy
# them to the GPU asynchronously without stacking them again.
MASK_BATCH_KEY = 'gt_sem_seg_batch'


def tensors_agree(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether there are tensors and they share one shape, dtype, device."""
    if not tensors:
        return False
    first = tensors[0]
    return all(
        t.shape == first.shape
        and t.dtype == first.dtype
        and t.device == first.device
        for t in tensors[1:]
    )


def _stack_masks(samples: list) -> Optional[torch.Tensor]:
    """Give the samples' ``gt_sem_seg`` as views of one stacked tensor.

    New sample objects replace the given ones (a data set or cache may
    still hold those); returns the stacked masks, or None (and the samples
    untouched) when they do not stack.
    """
    fields = [s.get('gt_sem_seg') for s in samples]
    if not all(isinstance(f, PixelData) and 'data' in f for f in fields):
        return None
    masks = [f.data for f in fields]
    if not tensors_agree(masks):
        return None
    stacked = torch.stack(masks)
    for i, (sample, field) in enumerate(zip(samples, fields)):
        copy = sample.new()
        copy.gt_sem_seg = field.new(data=stacked[i])
        samples[i] = copy
    return stacked


@FUNCTIONS.register_module()
def stack_seg_collate(data_batch: Sequence) -> Any:
    """``pseudo_collate`` with the images and masks stacked when they agree.

    Use it as ``collate_fn=dict(type='stack_seg_collate')`` in a dataloader
    config, with ``BatchSegDataPreProcessor`` as the model's data
    preprocessor. For a batch of dicts as mmseg's packing transforms produce
    them (``inputs`` a tensor, ``data_samples`` a ``SegDataSample``):

    - ``inputs`` becomes one tensor of shape (B, C, H, W) if every image has
      the same shape and dtype, else it stays a list (as
      ``pseudo_collate`` leaves it; validation images may differ in size);
    - if every sample's ``gt_sem_seg`` has the same shape and dtype, the
      masks are stacked into one tensor, given under the batch key
      ``'gt_sem_seg_batch'`` (so that ``pin_memory=True`` pins it), and
      each sample's ``gt_sem_seg.data`` is its slice of it (new sample
      objects, the same values).

    Everything else is collated by ``pseudo_collate``. mmseg's own
    ``SegDataPreProcessor`` reads such a batch as it reads a
    ``pseudo_collate`` one (it ignores the extra key, after copying it to
    the device with the rest).

    Args:
        data_batch (Sequence): The samples of one batch.

    Returns:
        Any: The collated batch.
    """
    batch = pseudo_collate(data_batch)
    if not isinstance(batch, dict) or MASK_BATCH_KEY in batch:
        return batch
    inputs = batch.get('inputs')
    if (
        isinstance(inputs, list)
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
        masks = _stack_masks(samples)
        if masks is not None:
            batch[MASK_BATCH_KEY] = masks
    return batch
