"""Pixel accuracy for the training log, without a host synchronisation."""

from typing import Optional

import torch


def pixel_accuracy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    """Top-1 accuracy (%) over the labelled pixels, as mmseg's ``accuracy``.

    mmseg's ``accuracy`` keeps the labelled pixels by boolean indexing
    (``correct[:, target != ignore_index]`` and
    ``target[target != ignore_index].numel()``). The size of such a result
    is data-dependent, so on a GPU the host waits for the step computed so
    far, twice per training step, just for a logged value (and
    ``torch.compile`` breaks its graph there). Here the labelled pixels are
    a mask that is summed instead: the same number, from tensors whose
    sizes the host already knows.

    Args:
        logits (Tensor): (B, C, H, W) scores.
        labels (Tensor): (B, H, W) class indices.
        ignore_index (int, optional): Label of unlabelled pixels. Default:
            None.

    Returns:
        Tensor: A 1-element tensor on ``logits``' device, in percent; 100
        when no pixel is labelled, as mmseg's ``eps`` terms give.
    """
    if logits.ndim != labels.ndim + 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f'pixel_accuracy: logits {tuple(logits.shape)} and labels '
            f'{tuple(labels.shape)} must be (B, C, ...) and (B, ...)'
        )
    correct = logits.argmax(dim=1) == labels
    if ignore_index is None:
        total = torch.full((), labels.numel(), device=labels.device)
    else:
        labelled = labels != ignore_index
        correct = correct & labelled
        total = labelled.sum()
    hits = correct.sum(dtype=torch.float32)
    acc = torch.where(total > 0, hits * 100.0 / total.clamp_min(1), 100.0)
    return acc.reshape(1)
