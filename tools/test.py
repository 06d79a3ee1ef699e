"""Test a checkpoint with the mmengine Runner (mmseg's ``tools/test.py``).

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
        [--metrics-json FILE] [--per-case FILE.csv] [--out DIR]
        [--show] [--show-dir DIR] [--wait-time S] [--tta]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Same arguments and behaviour as mmsegmentation 1.x's ``tools/test.py``.
What differs, and why:

- ``import mmseg_dfq`` first, CPU-only distributed runs and the device
  adaptation of the config, as in ``tools/train.py``.
- The metrics the Runner returns (flat keys such as ``Domain1/OD_Dice`` or
  ``mean_unseen/OC_HD95``) are written as JSON to ``--metrics-json``, by
  default ``<work_dir>/metrics.json`` (NaN, e.g. a distance to an empty
  prediction, is written as ``null``). mmseg only prints them to the log.
- ``--per-case FILE.csv`` writes one row per image/volume (domain, case,
  seen/unseen, every metric) through ``DomainMetric(per_case_file=...)``.
- ``--out`` keeps mmseg's meaning (the evaluator's ``output_dir`` for raw
  predictions: ``DomainMetric`` writes each sample's predicted label map
  as a PNG, ``<domain>/<image stem>.png`` or ``<domain>/<volume>_<k>.png``);
  it is refused with a clear message when a test evaluator has no
  ``output_dir`` argument (use ``--show-dir`` for overlays and
  ``tools/infer.py`` for masks and NIfTI volumes).
- ``--show``/``--show-dir`` use ``DomainVisualizationHook`` (mmseg's hook,
  which also paints NIfTI slices) and paint every test sample. For
  ``--show-dir`` it writes plain overlays (ground truth | prediction blended
  into the image, class contours, no text) from background threads: a few
  ms per image off the test loop, where mmseg's visualiser takes ~1 s.
  ``--cfg-options default_hooks.visualization.painter=mmseg`` brings mmseg's
  pictures back; ``--show`` (a window) always uses them.
- ``--tta`` does what mmseg's does (``tta_model`` wraps the model,
  ``tta_pipeline`` replaces the test pipeline); the fundus and prostate
  dataset bases define horizontal-flip TTA, and a config without the two
  keys is refused with a message naming them.
- The visualisation hook and ``--per-case``'s metric are recognised by
  their registered class (``HOOKS`` / ``METRICS``), not by type name: a
  renamed or scoped ``DomainMetric`` subclass gets the CSV, a user's own
  visualisation hook is kept.
- A missing config or checkpoint file is reported before anything is built.
- A checkpoint that does not fit the config's model (weights missing,
  unexpected or of another shape: another class count, head or backbone)
  is refused with one line naming the file and the first keys of each
  kind, exit status 1, as is one that cannot be read; mmseg's tool warns
  and tests the model with the rest left at its initialisation. The
  check (:class:`mmseg_dfq.engine.checkpoint.CheckpointFitHook`) runs when
  the Runner has read the checkpoint, before it loads it.
- One failing case does not stop the evaluation: a plain ``TestLoop``
  becomes :class:`mmseg_dfq.engine.TolerantTestLoop`, which logs the
  failing batch's files and goes on; the metrics cover the other cases and
  the exit status is 1.
"""

import argparse
import inspect
import json
import math
import os
import os.path as osp
import sys
from collections import Counter

from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS, METRICS

import mmseg_dfq  # noqa: F401  (before mmseg.models: compat + registry)
from mmseg_dfq.compat import (
    CheckpointError,
    atomic_write,
    setup_distributed,
    teardown_distributed,
)
from mmseg_dfq.config import load_config
from mmseg_dfq.engine import DomainVisualizationHook
from mmseg_dfq.engine.checkpoint import CheckpointFitHook
from mmseg_dfq.evaluation import DomainMetric


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Default: None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='MMSeg test (and eval) a model'
    )
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir for logs and the metrics JSON'
    )
    parser.add_argument(
        '--metrics-json',
        help='JSON file for the returned metrics '
        '(default: <work_dir>/metrics.json)',
    )
    parser.add_argument(
        '--per-case', help='CSV file with one row of metrics per case'
    )
    parser.add_argument(
        '--out',
        type=str,
        help='the directory to save output prediction for offline '
        'evaluation (evaluators with an output_dir argument: DomainMetric, '
        'IoUMetric)',
    )
    parser.add_argument(
        '--show', action='store_true', help='show prediction results'
    )
    parser.add_argument(
        '--show-dir',
        help='paint every test sample (ground truth | prediction) into '
        'DIR/vis_data/vis_image/, one PNG per sample (named by its domain '
        'and case)',
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
        '--tta',
        action='store_true',
        help="test-time augmentation: the config's tta_model and "
        'tta_pipeline (horizontal flip for the fundus and prostate configs)',
    )
    # torch.distributed.launch (torch >= 2.0) passes --local-rank, older
    # versions --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on the visualization hook to paint (or show) predictions.

    Args:
        cfg (mmengine.Config): The test config, changed in place.
        args (argparse.Namespace): Parsed arguments.

    Returns:
        mmengine.Config: ``cfg``.
    """
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks, e.g. '
            "visualization=dict(type='SegVisualizationHook')"
        )
    vis = hooks['visualization']
    # Our subclass of mmseg's hook also paints NIfTI slices, and a test run
    # paints every sample rather than mmseg's every 50th. mmseg's own hook
    # (by any name or scope that resolves to it) becomes ours; a custom
    # hook is left as the config has it.
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        hook_cls = (
            vis['type']
            if inspect.isclass(vis.get('type'))
            else HOOKS.get(vis.get('type'))
        )
    if hook_cls is SegVisualizationHook:
        vis['type'] = DomainVisualizationHook.__name__
    vis['draw'] = True
    vis['interval'] = 1
    if args.show:
        vis['show'] = True
        vis['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def metric_class(evaluator, cfg):
    """The registered class of one evaluator entry, or None if unknown.

    Args:
        evaluator (dict): An entry of ``test_evaluator``.
        cfg (mmengine.Config): The config (its ``default_scope``).

    Returns:
        type | None: The metric class.
    """
    metric_type = evaluator.get('type')
    if inspect.isclass(metric_type):
        return metric_type
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return METRICS.get(metric_type)


def enable_tta(cfg, config_path):
    """Test with the config's test-time augmentation (mmseg's ``--tta``).

    The model is wrapped in ``cfg.tta_model`` (mmseg's ``SegTTAModel``:
    the softmax of the augmented predictions averaged) and the test data go
    through ``cfg.tta_pipeline`` (``TestTimeAug``). The fundus and prostate
    dataset bases define horizontal-flip TTA; every meta key the test
    pipeline packs reaches the metric (``SegTTAModel`` keeps the meta keys
    of the last augmented copy, and a flip changes none of the domain
    keys).

    Args:
        cfg (mmengine.Config): The test config, changed in place.
        config_path (str): The config file, for the error message.

    Raises:
        SystemExit: When the config has no ``tta_model`` or
            ``tta_pipeline``.
    """
    missing = [k for k in ('tta_model', 'tta_pipeline') if not cfg.get(k)]
    if missing:
        raise SystemExit(
            f'--tta needs {" and ".join(missing)} in the config, which '
            f'{config_path} lacks; see configs/_base_/datasets/fundus_dg.py '
            "for flip TTA (tta_model = dict(type='SegTTAModel') and a "
            'tta_pipeline with TestTimeAug)'
        )
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def set_prediction_dir(cfg, out_dir):
    """Give every test evaluator mmseg's ``output_dir`` (``--out``).

    Args:
        cfg (mmengine.Config): The test config, changed in place.
        out_dir (str): Directory for the raw predictions.

    Raises:
        SystemExit: When an evaluator has no ``output_dir`` argument.
    """
    evaluators = cfg.test_evaluator
    if not isinstance(evaluators, (list, tuple)):
        evaluators = [evaluators]
    for evaluator in evaluators:
        metric_cls = metric_class(evaluator, cfg)
        if metric_cls is None or (
            'output_dir' not in inspect.signature(metric_cls).parameters
        ):
            raise SystemExit(
                f'--out needs a test evaluator with an output_dir argument '
                f'(e.g. IoUMetric), but {evaluator["type"]} has none. Use '
                '--show-dir for overlays, --per-case for per-case metrics '
                'or tools/infer.py for prediction masks.'
            )
        evaluator['output_dir'] = out_dir
        evaluator['keep_results'] = True


def set_per_case_file(cfg, path):
    """Ask the test ``DomainMetric`` for its per-case CSV (``--per-case``).

    Args:
        cfg (mmengine.Config): The test config, changed in place.
        path (str): The CSV file.

    Raises:
        SystemExit: Unless exactly one test evaluator is a ``DomainMetric``
            (other metrics would silently ignore the argument).
    """
    evaluators = cfg.test_evaluator
    if not isinstance(evaluators, (list, tuple)):
        evaluators = [evaluators]
    targets = [
        e
        for e in evaluators
        if issubclass(metric_class(e, cfg) or object, DomainMetric)
    ]
    if len(targets) != 1:
        raise SystemExit(
            '--per-case needs exactly one DomainMetric test evaluator, got '
            f'{[e.get("type") for e in evaluators]}'
        )
    targets[0]['per_case_file'] = path


def to_json_value(value):
    """Make one metric value JSON-safe (NaN and infinities become None).

    Args:
        value: A metric as returned by the evaluator (number, NumPy scalar,
            tensor scalar or anything else).

    Returns:
        float | None | str: The value for ``json.dump``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def dump_metrics(metrics, path):
    """Write the metrics dict as JSON (main process only).

    Args:
        metrics (dict): What ``runner.test()`` returned.
        path (str): The JSON file.

    Returns:
        str: The absolute path written.
    """
    path = osp.abspath(path)
    # Atomic: a test killed while writing leaves the old file or none,
    # never a truncated one (tools/sweep.py takes the file as "done").
    atomic_write(
        path,
        json.dumps(
            {k: to_json_value(v) for k, v in metrics.items()}, indent=2
        ),
    )
    return path


def main(argv=None):
    """Build the Runner, test the checkpoint and write the metrics JSON.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
            Default: None.
    """
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'checkpoint {args.checkpoint!r} does not exist'
        )
    # Before the Runner: on CPU-only hosts mmengine's own init needs CUDA.
    setup_distributed(args.launcher)
    try:
        cfg = load_config(
            args.config, args.cfg_options, args.launcher, args.work_dir
        )
    except ValueError as err:  # a config check: the message says it all
        raise SystemExit(f'error: {err}') from None
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        enable_tta(cfg, args.config)
    if args.out is not None:
        set_prediction_dir(cfg, args.out)
    if args.per_case:
        set_per_case_file(cfg, args.per_case)

    if cfg.test_cfg.get('type', 'TestLoop') == 'TestLoop':
        cfg.test_cfg['type'] = 'TolerantTestLoop'

    runner = Runner.from_cfg(cfg)
    # mmengine loads load_from non-strictly; refuse another model's weights.
    runner.register_hook(CheckpointFitHook(args.checkpoint, args.config))
    try:
        metrics = runner.test()
    except CheckpointError as err:  # unreadable, or not this model's
        raise SystemExit(f'error: {err}') from None
    failures = getattr(runner.test_loop, 'failures', [])
    hook_failures = getattr(runner.test_loop, 'hook_failures', [])

    if is_main_process():
        path = dump_metrics(
            metrics,
            args.metrics_json or osp.join(cfg.work_dir, 'metrics.json'),
        )
        print(f'Metrics written to {path}', flush=True)
    teardown_distributed()
    message = failure_message(failures, hook_failures)
    if message:
        sys.exit(message)


def failure_message(failures, hook_failures):
    """The exit message for a test run with failures, or None.

    Args:
        failures (list): ``TolerantTestLoop.failures``: (files, error) of
            batches left out of the metrics.
        hook_failures (list): ``TolerantTestLoop.hook_failures``: (hook,
            files, error) of hook errors after a tested batch (e.g. an
            overlay that could not be painted).

    Returns:
        str | None: One line naming the files or hooks.
    """
    parts = []
    if failures:
        # One entry per file (2.5D samples name their slice).
        files = Counter(
            f.split(' (slice ')[0] for batch, _ in failures for f in batch
        )
        listed = ', '.join(
            f'{f} ({n} samples)' if n > 1 else f for f, n in files.items()
        )
        parts.append(
            f'{len(failures)} test batch(es) failed and were left out of '
            f'the metrics: {listed}'
        )
    if hook_failures:
        # What a hook should have written is missing; the batches were
        # tested.
        hooks = Counter(name for name, _, _ in hook_failures)
        listed = ', '.join(
            f'{name} ({n} batches)' for name, n in hooks.items()
        )
        parts.append(
            f'hooks failed after {len(hook_failures)} tested batch(es), '
            f'which are in the metrics (see the log): {listed}'
        )
    if parts:
        return 'error: ' + '; '.join(parts)
    return None


if __name__ == '__main__':
    main()
