"""Test a checkpoint with the mmengine Runner (mmseg's tools/test.py).

Same arguments as mmsegmentation's ``tools/test.py``. What is different,
and why:

- ``import mmseg_dfq`` first (registration + :mod:`mmseg_dfq.compat`), and
  CPU-only distributed runs as in ``tools/train.py``.
- The metrics the Runner returns (flat keys such as ``Domain1/OD_Dice``,
  ``mean_unseen/OC_HD95``) are written as JSON: ``--out FILE.json``, by
  default ``<work_dir>/metrics.json``. mmseg's ``--out`` (a folder of raw
  predictions for IoUMetric's format-only mode) has no meaning for
  ``DomainMetric``; use ``--show-dir`` for prediction overlays and
  ``tools/infer.py`` for masks and NIfTI volumes.
- ``--per-case FILE.csv`` writes one row per image/volume (domain, case,
  seen/unseen, every metric) through ``DomainMetric(per_case_file=...)``.
"""

import argparse
import json
import math
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.runner import Runner

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registration)
from mmseg_dfq.compat import setup_distributed
from mmseg_dfq.config import load_config


def parse_args():
    parser = argparse.ArgumentParser(
        description='MMSeg test (and eval) a model'
    )
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir for logs and the metrics JSON'
    )
    parser.add_argument(
        '--out',
        help='JSON file for the metrics (default: <work_dir>/metrics.json)',
    )
    parser.add_argument(
        '--per-case', help='CSV file with one row of metrics per case'
    )
    parser.add_argument(
        '--show', action='store_true', help='show prediction results'
    )
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir',
    )
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)'
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
    parser.add_argument(
        '--tta', action='store_true', help='Test time augmentation'
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on mmseg's SegVisualizationHook to paint predictions."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks, e.g. '
            "visualization=dict(type='SegVisualizationHook')"
        )
    # Our subclass also paints NIfTI slices; every test sample is painted.
    hooks['visualization']['type'] = 'DomainVisualizationHook'
    hooks['visualization']['draw'] = True
    hooks['visualization']['interval'] = 1
    if args.show:
        hooks['visualization']['show'] = True
        hooks['visualization']['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def _json_number(value):
    value = float(value)
    return None if math.isnan(value) else value


def main():
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'checkpoint {args.checkpoint!r} does not exist'
        )
    setup_distributed(args.launcher)
    cfg = load_config(
        args.config, args.cfg_options, args.launcher, args.work_dir
    )
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.per_case:
        cfg.test_evaluator['per_case_file'] = args.per_case

    runner = Runner.from_cfg(cfg)
    metrics = runner.test()

    out = args.out or osp.join(cfg.work_dir, 'metrics.json')
    if is_main_process():
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
        print(f'Metrics written to {out}')


if __name__ == '__main__':
    main()
