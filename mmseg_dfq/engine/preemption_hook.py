"""Save a checkpoint and stop when the job is about to be preempted."""

import os
import os.path as osp
import signal
from typing import Sequence, Union

import torch
from mmengine.dist import get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ..compat import atomic_write
from .resume_hook import ExactResumeHook

#: Exit status of a run stopped by a preemption signal after it saved its
#: checkpoint (EX_TEMPFAIL: "try again"); ``tools/slurm_train.sh`` requeues
#: the job on it.
PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; ends the run."""


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Checkpoint at the next iteration boundary on SIGTERM / SIGUSR1.

    Cluster schedulers announce preemption with a signal (slurm:
    ``--signal=B:USR1@120`` sends SIGUSR1 two minutes before the end of
    the allocation; SIGTERM before a kill). On the first of the configured
    signals the hook lets the running iteration finish, then every rank
    saves ``iter_<N>.pth`` (with ``ExactResumeHook``'s state, so
    ``--resume`` continues exactly), ``last_checkpoint`` names it, and the
    run exits with status ``exit_code``. A second signal exits at once
    with status 128 + signal number, saving nothing.

    In distributed runs the ranks agree so that they save the same
    iteration even when the signal reaches them at different times: each
    iteration starts an asynchronous all-reduce of a flag, and the next one
    reads it (from pinned memory after a CUDA event, with NCCL), so the
    host waits at most for the previous iteration's work (as the lagged
    loss logs do), never for the step it just queued; every rank stops
    after the iteration following the one where a signal was first seen.
    A signal that arrives during validation is acted on after it; one
    seen in the last iteration is logged (training has ended anyway).

    Args:
        signals (Sequence[str | int]): Signals to act on.
            Default: ('SIGTERM', 'SIGUSR1').
        exit_code (int): Exit status after the checkpoint is saved.
            Default: 75.
    """

    # after_train_iter after CheckpointHook (VERY_LOW): a checkpoint due
    # this iteration is written once.
    priority = 'LOWEST'

    def __init__(
        self,
        signals: Sequence[Union[str, int]] = ('SIGTERM', 'SIGUSR1'),
        exit_code: int = PREEMPTED_EXIT_CODE,
    ) -> None:
        self.signals = [self._signal(s) for s in signals]
        if not isinstance(exit_code, int) or not 1 <= exit_code <= 255:
            raise ValueError(
                f'PreemptionHook: exit_code must be an int in 1..255, got '
                f'{exit_code!r}'
            )
        self.exit_code = exit_code
        self._requested = None
        self._previous = {}
        self._pending = None

    @staticmethod
    def _signal(sig: Union[str, int]) -> signal.Signals:
        try:
            return (
                signal.Signals[sig]
                if isinstance(sig, str)
                else (signal.Signals(sig))
            )
        except (KeyError, ValueError):
            raise ValueError(
                f'PreemptionHook: unknown signal {sig!r}; give a name such '
                "as 'SIGUSR1' or a number"
            ) from None

    def _handle(self, signum, frame) -> None:
        if self._requested is not None:
            os.write(2, b'second preemption signal: exiting now\n')
            os._exit(128 + signum)
        self._requested = signum
        os.write(
            2,
            f'{signal.Signals(signum).name} received: saving a checkpoint '
            'after this iteration (distributed: after the next)\n'.encode(),
        )

    def before_train(self, runner) -> None:
        """Install the signal handlers."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def after_train(self, runner) -> None:
        """Put the previous handlers back; finish a pending agreement."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self._pending is not None:
            if self._pending.result():
                print_log(
                    'PreemptionHook: a preemption signal arrived in the '
                    'last training iteration; training has ended, so no '
                    'preemption checkpoint was needed',
                    logger='current',
                )
            self._pending = None

    def _agreed(self) -> bool:
        requested = self._requested is not None
        if get_dist_info()[1] == 1:
            return requested
        # Every rank reads the flags reduced at the previous iteration, so
        # all of them stop after the same one; then this iteration's flags
        # are sent on their way.
        if self._pending is not None:
            stop = self._pending.result()
            self._pending = None
            if stop:
                return True
        self._pending = _AsyncFlag(requested)
        return False

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """Save and stop when a preemption signal has arrived."""
        if not self._agreed():
            return
        filename = f'iter_{runner.iter + 1}.pth'
        path = osp.join(runner.work_dir, filename)
        last = runner.message_hub.get_info('last_ckpt')
        if last is None or osp.abspath(last) != osp.abspath(path):
            for hook in runner.hooks:
                # Collective, on every rank: save_checkpoint runs on rank 0.
                if (
                    isinstance(hook, ExactResumeHook)
                    and get_dist_info()[1] > 1
                ):
                    hook.gather()
            runner.save_checkpoint(
                runner.work_dir,
                filename,
                save_optimizer=True,
                save_param_scheduler=True,
                by_epoch=False,
            )
            runner.message_hub.update_info('last_ckpt', path)
            if is_main_process():
                atomic_write(
                    osp.join(runner.work_dir, 'last_checkpoint'), path
                )
        print_log(
            f'preempted: checkpoint {path} saved after iteration '
            f'{runner.iter + 1}; exiting with status {self.exit_code} '
            '(resume with --resume)',
            logger='current',
        )
        self.after_train(runner)
        raise Preempted(self.exit_code)


class _AsyncFlag:
    """A MAX all-reduce of one rank's 0/1 flag, read later.

    With NCCL the reduction and a copy into pinned host memory are queued
    on the GPU behind the step, and :meth:`result` waits on that copy's
    event only (a ``.item()`` on the GPU flag would wait for everything
    queued after it too). With gloo (CPU) it waits on the work.
    """

    def __init__(self, value: bool) -> None:
        import torch.distributed as dist

        cuda = dist.get_backend() == 'nccl'
        # A fill on the device: torch.tensor(..., device='cuda') would copy
        # from pageable memory and wait for the stream (a host sync).
        self.flag = torch.full(
            (1,), float(value), device='cuda' if cuda else 'cpu'
        )
        self.work = dist.all_reduce(
            self.flag, op=dist.ReduceOp.MAX, async_op=True
        )
        self.host = self.event = None
        if cuda:
            # NCCL's wait makes the current stream wait, not the host.
            self.work.wait()
            self.host = torch.empty(1, pin_memory=True)
            self.host.copy_(self.flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> bool:
        if self.event is None:
            self.work.wait()
            return bool(self.flag.item() > 0)
        self.event.synchronize()
        return bool(self.host.item() > 0)
