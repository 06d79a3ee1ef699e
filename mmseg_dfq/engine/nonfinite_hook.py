"""Stop (or skip the step) on a non-finite loss, naming the batch."""

import logging
import math
from typing import List

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict
from mmseg.registry import HOOKS


class NonFiniteLossError(FloatingPointError):
    """The training loss went NaN or infinite."""


def _value(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean())
    return float(v)


def batch_files(data_batch) -> List[str]:
    """The image files of a batch (with the slice index of 2.5D samples).

    Args:
        data_batch (dict): A batch as the dataloader yields it.

    Returns:
        list[str]: One entry per sample.
    """
    files = []
    samples = (data_batch or {}).get('data_samples') or []
    for sample in samples:
        meta = getattr(sample, 'metainfo', {})
        name = str(meta.get('img_path', '<unknown file>'))
        if meta.get('slice_index') is not None:
            name += f' (slice {meta["slice_index"]})'
        files.append(name)
    return files


class _FiniteStepGuard:
    """``update_params`` that leaves the model alone on a non-finite loss.

    Skips the backward pass and the step, and puts back the buffers
    (BatchNorm running statistics) that the forward pass changed.

    Replaces the optimizer wrapper's bound method on the instance (any
    wrapper class, AMP included). In distributed runs the ranks agree
    first, so that all of them skip the backward pass together.
    """

    def __init__(self, wrapper, hook) -> None:
        self.update = wrapper.update_params
        self.wrapper = wrapper
        self.hook = hook

    def __call__(self, loss, *args, **kwargs):
        bad = torch.tensor(
            [0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0],
            device=loss.device,
        )
        if get_dist_info()[1] > 1:
            all_reduce(bad, op='max')
        if bad.item() > 0:
            self.hook._skipped_step = True
            self.wrapper.zero_grad()
            # The forward pass already moved BatchNorm statistics.
            self.hook.restore_buffers()
            return None
        return self.update(loss, *args, **kwargs)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Catch non-finite losses before they reach the weights or a file.

    Before the optimizer step, a NaN/inf total loss skips the backward pass
    and the step (all ranks together), so the weights stay finite. After
    the iteration the hook either raises :class:`NonFiniteLossError`
    naming the iteration, the non-finite loss terms and the batch's image
    files (``action='raise'``), or logs a warning and counts the skipped
    steps (``train/skipped_steps`` in the log; ``action='skip'``). Images
    that hold NaN/inf themselves are named separately. Before
    any checkpoint is written the model's floating-point weights and
    buffers are checked: a non-finite model is never saved.

    Args:
        action (str): 'raise' or 'skip'. Default: 'raise'.
    """

    # after_train_iter before LoggerHook (BELOW_NORMAL) and CheckpointHook.
    priority = 'ABOVE_NORMAL'

    def __init__(self, action: str = 'raise') -> None:
        if action not in ('raise', 'skip'):
            raise ValueError(
                f"NonFiniteLossHook: action must be 'raise' or 'skip', got "
                f'{action!r}'
            )
        self.action = action
        self.skipped = 0
        self._skipped_step = False
        self._buffers = []

    def before_train(self, runner) -> None:
        """Guard the optimizer wrapper's ``update_params``."""
        wrapper = runner.optim_wrapper
        if isinstance(wrapper, OptimWrapperDict):
            print_log(
                'NonFiniteLossHook: several optimizers; non-finite losses '
                'are reported after the step instead of skipped before it',
                logger='current',
                level=logging.WARNING,
            )
            return
        if not isinstance(wrapper.update_params, _FiniteStepGuard):
            wrapper.update_params = _FiniteStepGuard(wrapper, self)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        """Copy the model's buffers, to undo a non-finite forward pass."""
        buffers = [b for b in runner.model.buffers() if b.is_floating_point()]
        if len(buffers) != len(self._buffers):
            self._buffers = [(b, b.detach().clone()) for b in buffers]
        else:
            for (_, saved), b in zip(self._buffers, buffers):
                saved.copy_(b.detach())

    def restore_buffers(self) -> None:
        """Put back the buffers copied before this iteration."""
        with torch.no_grad():
            for buffer, saved in self._buffers:
                buffer.copy_(saved)

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Raise or count when the step's loss was not finite."""
        terms = {}
        for name, value in (outputs or {}).items():
            try:
                number = _value(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                terms[name] = number
        skipped, self._skipped_step = self._skipped_step, False
        if not terms and not skipped:
            return
        iteration = runner.iter + 1
        files = batch_files(data_batch)
        inputs = (data_batch or {}).get('inputs') or []
        nonfinite_inputs = [
            name
            for name, x in zip(files, inputs)
            if torch.is_tensor(x)
            and x.is_floating_point()
            and not bool(torch.isfinite(x).all())
        ]
        if nonfinite_inputs:
            files = f'{files}; images with non-finite values: ' + str(
                nonfinite_inputs
            )
        rank = get_dist_info()[0]
        where = f' on rank {rank}' if get_dist_info()[1] > 1 else ''
        what = (
            f'non-finite loss terms {terms}'
            if terms
            else 'a non-finite loss on another rank'
        )
        if self.action == 'skip':
            self.skipped += 1
            runner.message_hub.update_scalar(
                'train/skipped_steps', self.skipped
            )
            print_log(
                f'iteration {iteration}{where}: {what}; step skipped '
                f'({self.skipped} so far). Batch: {files}',
                logger='current',
                level=logging.WARNING,
            )
            return
        state = (
            'the weights were left as they were (step skipped)'
            if skipped
            else 'the step may have changed the weights'
        )
        raise NonFiniteLossError(
            f'iteration {iteration}{where}: {what}; {state}, no checkpoint '
            f'was written for it. Batch images: {files}'
        )

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse to write a model with non-finite weights."""
        bad = [
            name
            for name, tensor in checkpoint.get('state_dict', {}).items()
            if torch.is_tensor(tensor)
            and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())
        ]
        if bad:
            raise NonFiniteLossError(
                f'not saving a checkpoint after iteration {runner.iter + 1}: '
                f'non-finite values in {bad[:5]}'
                f'{" ..." if len(bad) > 5 else ""}; the previous checkpoints '
                'are left untouched'
            )
