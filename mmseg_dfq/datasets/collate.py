"""A collate function that hands the main process whole-batch tensors.

mmengine's default ``pseudo_collate`` keeps a batch of B samples as B image
tensors and B data samples, each with its own mask tensor. A DataLoader
worker sends every tensor to the main process through its own
shared-memory segment and file descriptor; with ``pin_memory=True`` the
pin-memory thread then pins each image (the masks, inside data samples,
it leaves in pageable memory). :func:`stack_seg_collate` stacks the images
into one (B, C, H, W) tensor and the masks into one (B, 1, H, W) tensor
when their shapes agree, both in one shared buffer, and sends the two
tensors alone (the samples get their mask views back on arrival): the
main process receives one shared-memory segment and two tensors per batch
and pins two tensors (figures: ``tools/benchmark.py --loader``, and the
README's fast-path section).

The result is what any mmseg data preprocessor accepts: ``inputs`` is a
batch tensor (which iterates as its images) and every sample keeps its
``gt_sem_seg``, now a view of the stacked masks.
:class:`~mmseg_dfq.models.data_preprocessors.BatchSegDataPreProcessor`
then moves and normalises the batch in a few whole-batch operations.
"""

import math
from typing import Any, List, Optional, Sequence

import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from mmengine.structures import BaseDataElement, PixelData

# The batch key under which stack_seg_collate also hands over the stacked
# masks: the DataLoader's pin-memory thread pins the tensors of a batch dict
# (not those inside data samples), so BatchSegDataPreProcessor can copy
# them to the GPU asynchronously without stacking them again.
MASK_BATCH_KEY = 'gt_sem_seg_batch'
# With stack_seg_collate(mask_dtype=...): the dtype the masks had before
# they were narrowed for the trip, for BatchSegDataPreProcessor to restore
# on the device.
MASK_DTYPE_KEY = 'gt_sem_seg_dtype'


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


def _mask_fields(samples: list) -> Optional[list]:
    """The samples' ``gt_sem_seg`` fields if their masks stack, else None."""
    fields = [s.get('gt_sem_seg') for s in samples]
    if not all(isinstance(f, PixelData) and 'data' in f for f in fields):
        return None
    return fields if tensors_agree([f.data for f in fields]) else None


def _stack_together(groups: List[List[torch.Tensor]]) -> List[torch.Tensor]:
    """``torch.stack`` each group, into views of one byte buffer.

    One storage holds all the stacked tensors (each at an offset aligned
    to 64 bytes), so a DataLoader worker hands the main process one
    shared-memory segment per batch: receiving each segment costs a
    round trip to the worker (file-descriptor sharing, torch's default on
    Linux). Tensors off the CPU are stacked apart.
    """
    if not all(g[0].device.type == 'cpu' for g in groups):
        return [torch.stack(g) for g in groups]
    shapes, offsets, total = [], [], 0
    for group in groups:
        shape = (len(group),) + tuple(group[0].shape)
        total = -(-total // 64) * 64
        shapes.append(shape)
        offsets.append(total)
        total += math.prod(shape) * group[0].element_size()
    buffer = torch.empty(total, dtype=torch.uint8)
    stacked = []
    for group, shape, offset in zip(groups, shapes, offsets):
        size = math.prod(shape) * group[0].element_size()
        out = buffer[offset : offset + size].view(group[0].dtype).view(shape)
        torch.stack(group, out=out)
        stacked.append(out)
    return stacked


def _is_plain_view(field, masks: torch.Tensor, i: int) -> bool:
    """Whether ``field`` is a bare PixelData holding exactly ``masks[i]``."""
    if type(field) is not PixelData or field.keys() != ['data']:
        return False
    if field.metainfo_keys():
        return False
    data = field.data
    return (
        isinstance(data, torch.Tensor)
        and data.untyped_storage().data_ptr()
        == masks.untyped_storage().data_ptr()
        and data.storage_offset()
        == masks.storage_offset() + i * masks.stride(0)
        and data.shape == masks.shape[1:]
        and data.stride() == masks.stride()[1:]
        and data.dtype == masks.dtype
    )


def _rebuild_seg_batch(batch: dict) -> 'SegBatch':
    """Unpickle a :class:`SegBatch`: the masks back into the samples."""
    masks = batch[MASK_BATCH_KEY]
    for sample, view in zip(batch['data_samples'], masks.unbind(0)):
        sample.gt_sem_seg = PixelData(data=view)
    return SegBatch(batch)


class SegBatch(dict):
    """The batch of :func:`stack_seg_collate` when its masks were stacked.

    A plain dict to every reader. It only changes how the batch crosses
    from a DataLoader worker to the main process. There, each shared
    storage costs the receiving thread a socket round trip to the worker
    (torch's default ``file_descriptor`` sharing) and each tensor a few
    calls into torch, and those calls let go of the GIL. In a training
    process the receiving thread is the DataLoader's pin-memory thread,
    and the main thread is busy in Python queuing the GPU step, so each
    of them can wait a thread switch interval (5 ms by default) to get the
    GIL back. A batch of B samples whose masks are views of the stacked
    masks would send B + 2 tensors; a SegBatch sends the images and the
    stacked masks only (one storage, from :func:`_stack_together`), and
    puts the views back into the samples with one ``unbind`` on arrival.
    What arrives has the values, dtypes, shapes, strides, shared storage,
    sample types, metainfo and fields of the batch sent (the samples are
    copies, as a plain dict's would be).

    Samples whose ``gt_sem_seg`` is not exactly their slice of the stacked
    masks (changed after collation) are sent whole, as a dict would be.
    """

    def __reduce__(self):
        masks = self.get(MASK_BATCH_KEY)
        samples = self.get('data_samples')
        if not (
            isinstance(masks, torch.Tensor)
            and isinstance(samples, list)
            and len(samples) == len(masks)
            and all(
                isinstance(s, BaseDataElement)
                and _is_plain_view(s.get('gt_sem_seg'), masks, i)
                for i, s in enumerate(samples)
            )
        ):
            return (SegBatch, (dict(self),))
        light = []
        for sample in samples:
            copy = sample.new()
            del copy.gt_sem_seg
            light.append(copy)
        return (_rebuild_seg_batch, ({**self, 'data_samples': light},))

    def __copy__(self) -> 'SegBatch':
        # copy.copy (torch's pin_memory clones a mapping with it) would
        # otherwise go through __reduce__.
        return SegBatch(self)


_TRANSPORT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def mask_transport_dtype(mask_dtype) -> torch.dtype:
    """``mask_dtype`` of :func:`stack_seg_collate` as a torch dtype.

    Raises:
        ValueError: If it is not one of uint8, int8, int16, int32 (by name
            or as a torch dtype).
    """
    dtype = (
        getattr(torch, mask_dtype, None)
        if isinstance(mask_dtype, str)
        else mask_dtype
    )
    if not any(dtype is d for d in _TRANSPORT_DTYPES):
        raise ValueError(
            'stack_seg_collate: mask_dtype must be one of '
            f"'uint8', 'int8', 'int16', 'int32', got {mask_dtype!r}"
        )
    return dtype


def _narrowed(masks: List[torch.Tensor], dtype: torch.dtype):
    """The masks in ``dtype`` if that is smaller and holds every value."""
    source = masks[0].dtype
    if (
        source.is_floating_point
        or source.is_complex
        or source == torch.bool
        or dtype.itemsize >= source.itemsize
    ):
        return None
    info = torch.iinfo(dtype)
    for mask in masks:
        low, high = torch.aminmax(mask)
        if int(low) < info.min or int(high) > info.max:
            return None
    return [mask.to(dtype) for mask in masks]


@FUNCTIONS.register_module()
def stack_seg_collate(
    data_batch: Sequence, compact: bool = True, mask_dtype=None
) -> Any:
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
      objects, the same values);
    - with ``compact=True``, images and masks stacked together share one
      storage, and the batch is a :class:`SegBatch`, a dict that a worker
      sends without the per-sample mask views.

    Everything else is collated by ``pseudo_collate``. mmseg's own
    ``SegDataPreProcessor`` reads such a batch as it reads a
    ``pseudo_collate`` one (it ignores the extra key, after copying it to
    the device with the rest).

    Args:
        data_batch (Sequence): The samples of one batch.
        compact (bool): One buffer and a :class:`SegBatch`. False stacks
            the images and the masks apart, in a plain dict, whose
            per-sample mask views travel too (the earlier layout, kept for
            comparisons:
            ``collate_fn=dict(type='stack_seg_collate', compact=False)``).
            Default: True.
        mask_dtype (str | torch.dtype, optional): Send the stacked masks
            in this smaller integer dtype (e.g. ``'uint8'``) when it holds
            every value of the batch (labels and the ignore index 255):
            mmseg's packing makes int64 masks, 8 bytes a pixel, which a
            worker writes to shared memory and the pin-memory thread copies
            again (a B16 batch of 256 px crops: 8 MiB of masks next to 3 MiB
            of uint8 images; in uint8, 1 MiB). The samples' masks are then
            views in that dtype and the batch says under
            ``'gt_sem_seg_dtype'`` which dtype they had;
            ``BatchSegDataPreProcessor`` puts them back to it on the device
            (it is the only data preprocessor that does: the config check
            refuses another). None sends them as they are. Default: None.

    Returns:
        Any: The collated batch.
    """
    batch = pseudo_collate(data_batch)
    if not isinstance(batch, dict) or MASK_BATCH_KEY in batch:
        return batch
    inputs = batch.get('inputs')
    images = (
        isinstance(inputs, list)
        and all(isinstance(x, torch.Tensor) for x in inputs)
        and tensors_agree(inputs)
    )
    samples = batch.get('data_samples')
    fields = None
    if (
        isinstance(samples, list)
        and samples
        and all(isinstance(s, BaseDataElement) for s in samples)
    ):
        fields = _mask_fields(samples)
    mask_group = [f.data for f in fields] if fields else None
    restore = None
    if fields and mask_dtype is not None:
        narrow = _narrowed(mask_group, mask_transport_dtype(mask_dtype))
        if narrow is not None:
            restore = mask_group[0].dtype
            mask_group = narrow
    groups = ([inputs] if images else []) + ([mask_group] if fields else [])
    if compact:
        stacked = _stack_together(groups) if groups else []
    else:
        stacked = [torch.stack(g) for g in groups]
    if images:
        batch['inputs'] = stacked.pop(0)
    if not fields:
        return batch
    masks = stacked.pop(0)
    # New sample objects (a data set or cache may still hold the given
    # ones), each holding its slice of the stacked masks.
    for i, (sample, field, view) in enumerate(
        zip(samples, fields, masks.unbind(0))
    ):
        copy = sample.new()
        copy.gt_sem_seg = field.new(data=view)
        samples[i] = copy
    batch[MASK_BATCH_KEY] = masks
    if restore is not None:
        batch[MASK_DTYPE_KEY] = restore
    return SegBatch(batch) if compact else batch
