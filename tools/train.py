"""Train a segmentor with the mmengine Runner (mmseg's ``tools/train.py``).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Same arguments and behaviour as mmsegmentation 1.x's ``tools/train.py``.
What differs, and why:

- ``import mmseg_dfq`` before anything imports ``mmseg.models``: it applies
  :mod:`mmseg_dfq.compat` (pure-PyTorch ``mmcv.ops`` stand-ins for
  mmcv-lite, safe loading of mmengine checkpoints under torch's
  ``weights_only=True``) and registers the DFQ components, so configs work
  with or without their ``custom_imports``.
- :func:`mmseg_dfq.compat.setup_distributed` runs before the config is read
  and :func:`mmseg_dfq.compat.adapt_cfg_to_device` (through
  :func:`mmseg_dfq.config.load_config`) before the Runner is built: on a
  host without CUDA, ``--launcher pytorch|slurm|mpi`` gets a gloo process
  group, ``SyncBN`` becomes ``BN`` and DDP runs without device ids, because
  mmengine's launchers call ``torch.cuda.set_device``. On GPU hosts nothing
  changes.
- ``--amp`` on a host without an accelerator stops with a clear message:
  mmengine's ``AmpOptimWrapper`` asserts CUDA/NPU/MLU/MUSA.
- A config file that does not exist is reported as such (mmengine would
  fail later with a less direct message).
- ``--resume`` without a checkpoint path resumes from the newest checkpoint
  of the work dir that loads (mmengine takes the one ``last_checkpoint``
  names and fails on a truncated file), warning about each unreadable one;
  a broken ``load_from`` / resume file is one error line naming the file.
- Exit status: 0 when training finished; 75
  (:data:`mmseg_dfq.engine.PREEMPTED_EXIT_CODE`) when ``PreemptionHook``
  saved a checkpoint on SIGTERM/SIGUSR1 and stopped (run again with
  ``--resume``); 128 + signal number on a second signal; 1 with one error
  line for an unreadable checkpoint or a non-finite loss.
"""

import argparse
import logging
import os

from mmengine.config import DictAction
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registry)
from mmseg_dfq.compat import (
    CheckpointError,
    setup_distributed,
    teardown_distributed,
)
from mmseg_dfq.config import load_config
from mmseg_dfq.engine import (
    NonFiniteLossError,
    find_resumable_checkpoint,
    remove_stale_temp_files,
)

# Devices for which mmengine's AmpOptimWrapper works.
AMP_DEVICES = ('cuda', 'npu', 'mlu', 'musa')


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Default: None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir '
        'automatically (or from load_from when it is set)',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (GPU/NPU only)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch (torch >= 2.0) passes --local-rank, older
    # versions --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_amp(cfg):
    """Switch the optimizer wrapper to mmengine's ``AmpOptimWrapper``.

    Args:
        cfg (mmengine.Config): The training config, changed in place.

    Raises:
        SystemExit: On a host without an accelerator AMP supports, or when
            the config's optimizer wrapper is not a plain ``OptimWrapper``.
    """
    device = get_device()
    if device not in AMP_DEVICES:
        raise SystemExit(
            f'--amp needs one of {AMP_DEVICES} (mmengine AmpOptimWrapper), '
            f'but this host only has {device!r}; train in float32 without '
            '--amp.'
        )
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print_log(
            'AMP training is already enabled in your config.',
            logger='current',
            level=logging.WARNING,
        )
        return
    if wrapper != 'OptimWrapper':
        raise SystemExit(
            '--amp is only supported when the optimizer wrapper type is '
            f'OptimWrapper, but got {wrapper}.'
        )
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def main(argv=None):
    """Build the Runner from the config and train.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Default: None.
    """
    args = parse_args(argv)
    # Before the Runner: on CPU-only hosts mmengine's own init needs CUDA.
    setup_distributed(args.launcher)
    try:
        cfg = load_config(
            args.config, args.cfg_options, args.launcher, args.work_dir
        )
    except ValueError as err:  # a config check: the message says it all
        raise SystemExit(f'error: {err}') from None
    if args.amp:
        enable_amp(cfg)
    cfg.resume = args.resume
    if args.resume and int(os.environ.get('RANK', '0')) == 0:
        # Left by a run killed while writing a checkpoint.
        remove_stale_temp_files(cfg.work_dir)
    if args.resume and cfg.get('load_from') is None:
        path, _ = find_resumable_checkpoint(cfg.work_dir)
        # None: nothing to resume from yet (a first start); mmengine then
        # trains from scratch.
        cfg.load_from = path

    try:
        if 'runner_type' not in cfg:
            runner = Runner.from_cfg(cfg)
        else:
            runner = RUNNERS.build(cfg)
        runner.train()
    except (CheckpointError, NonFiniteLossError) as err:
        raise SystemExit(f'error: {err}') from None
    teardown_distributed()


if __name__ == '__main__':
    main()
