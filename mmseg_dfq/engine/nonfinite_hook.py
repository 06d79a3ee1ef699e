"""Stop (or skip the step) on a non-finite loss, naming the batch."""

import logging
import math
from typing import List, Optional

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict
from mmseg.registry import HOOKS

from ..evaluation.cases import sample_name


class NonFiniteLossError(FloatingPointError):
    """The training loss went NaN or infinite."""


def _value(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean())
    return float(v)


def batch_files(data_batch) -> List[str]:
    """The image files of a batch (with the slice index of 2.5D samples).

    Args:
        data_batch (dict): A batch as the dataloader yields it; in a
            test-time augmentation batch (``TestTimeAug``) ``data_samples``
            holds one list of samples per view, and the first view names
            them.

    Returns:
        list[str]: One entry per sample.
    """
    files = []
    samples = (data_batch or {}).get('data_samples') or []
    if len(samples) and isinstance(samples[0], (list, tuple)):
        samples = samples[0]  # TTA: the views hold the same samples
    for sample in samples:
        files.append(sample_name(getattr(sample, 'metainfo', {})))
    return files


def _skips_on_device(wrapper) -> bool:
    """Whether ``wrapper``'s optimizer can skip a step without the host.

    torch's fused optimizers (``fused=True``: Adam, AdamW, SGD) take a
    ``found_inf`` tensor and leave parameters and state untouched where it
    is non-zero, on the device. A wrapper with a loss scaler sets that
    attribute itself, so it keeps the host-side check.
    """
    optimizer = getattr(wrapper, 'optimizer', None)
    return (
        optimizer is not None
        and bool(optimizer.defaults.get('fused'))
        and getattr(optimizer, '_step_supports_amp_scaling', False)
        and getattr(wrapper, 'loss_scaler', None) is None
        # With gradient accumulation a bad micro-batch's NaN gradients
        # would reach a later step whose own flag is clear.
        and getattr(wrapper, '_accumulative_counts', 1) == 1
    )


class _FiniteStepGuard:
    """``update_params`` that leaves the model alone on a non-finite loss.

    Puts back the buffers (BatchNorm running statistics) that the forward
    pass changed and leaves the weights and optimizer state as they were.
    In distributed runs the ranks agree first, so that all of them skip
    together.

    With a fused optimizer (see :func:`_skips_on_device`) the decision
    stays on the device: the optimizer gets the flag as ``found_inf``, the
    buffers are put back with ``torch.where``, and the hook reads the flag
    one iteration later, when that step is long finished, so the host never
    waits for the GPU here. Otherwise the flag is read at once (a host
    synchronisation before the backward pass) and a bad step skips the
    backward pass too.

    Replaces the optimizer wrapper's bound method on the instance (any
    wrapper class, AMP included).
    """

    def __init__(self, wrapper, hook) -> None:
        self.update = wrapper.update_params
        self.wrapper = wrapper
        self.hook = hook
        self.on_device = _skips_on_device(wrapper)

    def __call__(self, loss, *args, **kwargs):
        bad = (~torch.isfinite(loss.detach()).all()).float()
        if get_dist_info()[1] > 1:
            all_reduce(bad, op='max')
        if self.on_device:
            optimizer = self.wrapper.optimizer
            optimizer.found_inf = bad
            try:
                result = self.update(loss, *args, **kwargs)
            finally:
                del optimizer.found_inf
            self.hook.restore_buffers(where=bad)
            self.hook.record_step(bad)
            return result
        if bad.item() > 0:
            self.hook.record_step(bad)
            self.wrapper.zero_grad()
            # The forward pass already moved BatchNorm statistics.
            self.hook.restore_buffers()
            return None
        self.hook.record_step(bad)
        return self.update(loss, *args, **kwargs)


class _StepRecord:
    """One training step as the hook checks it, possibly later."""

    def __init__(self, iteration: int, files: List[str], inputs) -> None:
        self.iteration = iteration
        self.files = files
        self.inputs = inputs
        self.flag = None
        self.event = None

    def set_flag(self, bad: torch.Tensor) -> None:
        """Start copying the skip flag to the host without waiting."""
        if bad.is_cuda:
            self.flag = bad.to('cpu', non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag = bad

    def skipped(self) -> bool:
        """Whether the step was skipped (waits for that step only)."""
        if self.flag is None:
            return False
        if self.event is not None:
            self.event.synchronize()
        return bool(self.flag.item() > 0)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Catch non-finite losses before they reach the weights or a file.

    Before the optimizer step, a NaN/inf total loss skips the step (all
    ranks together), so the weights stay finite: with a fused optimizer on
    the device (the backward pass runs, the update does not; see
    ``_FiniteStepGuard``), otherwise on the host, skipping the backward pass
    too. After the iteration the hook either raises
    :class:`NonFiniteLossError` naming the iteration, the non-finite loss
    terms and the batch's image files (``action='raise'``), or logs a
    warning and counts the skipped steps (``train/skipped_steps`` in the
    log; ``action='skip'``). Behind ``FastPathHook``'s lagged log variables
    each step is checked one iteration later (the last one after the loop).
    Images that hold NaN/inf themselves are named separately. Before any
    checkpoint is written the model's floating-point weights and buffers are
    checked: a non-finite model is never saved.

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
        self._buffers = []
        self._current = None
        self._previous = None
        self._lagged = False

    def before_train(self, runner) -> None:
        """Guard the optimizer wrapper's ``update_params``."""
        # FastPathHook (VERY_HIGH priority, so before this hook) may make
        # train_step return each iteration's log variables one iteration
        # late; the checks then follow the same lag.
        self._lagged = getattr(
            runner.model.train_step, '_fast_path_lagged', False
        )
        self._current = self._previous = None
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
        # A list of images (pseudo_collate) or a (B, C, H, W) batch
        # (stack_seg_collate); iterating either gives the images.
        inputs = (data_batch or {}).get('inputs')
        if inputs is None:
            inputs = []
        self._current = _StepRecord(
            runner.iter + 1, batch_files(data_batch), inputs
        )
        buffers = [b for b in runner.model.buffers() if b.is_floating_point()]
        if len(buffers) != len(self._buffers):
            self._buffers = [(b, b.detach().clone()) for b in buffers]
        else:
            for (_, saved), b in zip(self._buffers, buffers):
                saved.copy_(b.detach())

    def restore_buffers(self, where: Optional[torch.Tensor] = None) -> None:
        """Put back the buffers copied before this iteration.

        Args:
            where (Tensor, optional): A 0-d flag on the buffers' device;
                the buffers are put back only where it is non-zero (no host
                synchronisation). None puts them back unconditionally.
        """
        with torch.no_grad():
            for buffer, saved in self._buffers:
                if where is None:
                    buffer.copy_(saved)
                else:
                    buffer.copy_(torch.where(where > 0, saved, buffer))

    def record_step(self, bad: torch.Tensor) -> None:
        """Note the current step's skip flag (read later, or at once)."""
        if self._current is not None:
            self._current.set_flag(bad)

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Raise or count when a step's loss was not finite.

        Checks the step that ``outputs`` describes: this iteration's, or,
        behind FastPathHook's lagged log variables, the previous one.
        """
        record = self._current
        if self._lagged:
            record, self._previous = self._previous, self._current
        self._current = None
        if record is not None:
            self._check(runner, record, outputs)

    def after_train(self, runner) -> None:
        """Check the last step, whose log variables came after the loop."""
        record, self._previous = self._previous, None
        if record is not None:
            self._check(runner, record, None)

    def _check(self, runner, record: _StepRecord, outputs) -> None:
        terms = {}
        for name, value in (outputs or {}).items():
            try:
                number = _value(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                terms[name] = number
        skipped = record.skipped()
        if not terms and not skipped:
            return
        files = record.files
        nonfinite_inputs = [
            name
            for name, x in zip(files, record.inputs)
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
            else 'a non-finite loss'
            + ('' if outputs is None else ' on another rank')
        )
        iteration = record.iteration
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
        saved = (
            'a checkpoint saved since holds the weights from before it'
            if self._lagged and skipped
            else 'no checkpoint was written with non-finite weights'
            if self._lagged
            else 'no checkpoint was written for it'
        )
        raise NonFiniteLossError(
            f'iteration {iteration}{where}: {what}; {state}, {saved}. '
            f'Batch images: {files}'
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
