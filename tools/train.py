"""Train a segmentor with the mmengine Runner (mmseg's tools/train.py).

Same arguments and behaviour as mmsegmentation's ``tools/train.py``. What is
different, and why:

- ``import mmseg_dfq`` first: registers the DFQ components and applies
  :mod:`mmseg_dfq.compat` (mmcv-lite ops, safe checkpoint loading).
- ``--launcher pytorch|slurm|mpi`` on a host without CUDA initialises a gloo
  process group and adapts the config (``SyncBN`` -> ``BN``, DDP without
  device ids) before the Runner is built, because mmengine's launchers call
  ``torch.cuda.set_device``. On GPU hosts nothing changes.
- ``--amp`` on a host without CUDA stops with a clear message (mmengine's
  ``AmpOptimWrapper`` supports GPUs/NPUs only) instead of an assertion.
- A missing config file is reported as such.
"""

import argparse
import logging
import os

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)
from mmseg_dfq.compat import setup_distributed
from mmseg_dfq.config import load_config


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir automatically',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (GPU)',
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
    # torch.distributed.launch passes --local-rank, older tools --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_amp(cfg):
    """Switch the optimizer wrapper to mmengine's AmpOptimWrapper."""
    if not torch.cuda.is_available():
        raise SystemExit(
            '--amp needs a GPU (mmengine AmpOptimWrapper); on the CPU train '
            'in float32 without --amp.'
        )
    wrapper = cfg.optim_wrapper.type
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


def main():
    args = parse_args()
    setup_distributed(args.launcher)
    cfg = load_config(
        args.config, args.cfg_options, args.launcher, args.work_dir
    )
    if args.amp:
        enable_amp(cfg)
    cfg.resume = args.resume

    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
