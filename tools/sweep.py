"""Leave-one-domain-out sweep: every held-out split x variant x seed, tabled.

Usage::

    python tools/sweep.py --benchmark fundus --variant dfq --variant segformer
        [--variant dfqhead model.decode_head.channels=256 ...]
        [--seeds 0 1 2] [--targets 1 3] [--work-dir DIR] [--data-root DIR]
        [--cfg-options KEY=VALUE ...] [--launch {inprocess,subprocess}]
        [--collect] [--print-commands [--slurm-partition P]]
        [--job-array FILE]

A *benchmark* is a list of split bases: ``fundus`` (the four
``configs/_base_/datasets/fundus_dg_d{k}.py``), ``prostate`` (the six
``prostate_dg_d{k}.py``) or your own split files / glob patterns, each a
dataset config whose ``train_dataloader.dataset.domains`` are the sources and
whose ``test_dataloader.dataset.unseen_domains`` names the held-out target.

A *variant* is a config plus overrides: a name of :data:`VARIANTS`
(``dfq``, ``segformer``, ``dfqhead``, ``dfq-authors-layout``), or any config
path (``{benchmark}`` and ``{k}`` in it are filled per split); ``LABEL=SPEC``
names it in the table; ``KEY=VALUE`` tokens after it are ``--cfg-options``
for that variant alone.

For every (variant, split, seed) the sweep writes one self-contained config
``<work-dir>/configs/<variant>_<split>[_seed<s>].py`` (the variant's config,
the split's domain keys, the variant's, then the global overrides, then the
seed; flattened by mmengine), then trains it with ``tools/train.py`` in
``<work-dir>/<variant>/<split>[/seed<s>]`` and tests the final checkpoint
with ``tools/test.py`` (``metrics.json`` in the same folder). The same two
commands are what ``--print-commands`` / ``--job-array`` give a cluster, so
a table collected (``--collect``) from jobs run elsewhere is the one a local
sweep writes.

By default the two tools run in this process (their ``main(argv)``): mmseg,
torch and the plugin are imported once, which keeps a sweep of tiny runs
(CI) from spending most of its time on imports. ``--launch subprocess``
runs them as child processes instead (one crashing split does not take the
sweep down, and memory is returned after every split).

Resume: a run whose final checkpoint (``iter_<max_iters>.pth`` or
``epoch_<max_epochs>.pth``) and ``metrics.json`` exist is not touched; one
with the checkpoint only is tested; any other is trained with ``--resume``
(an interrupted training continues from its latest checkpoint). A run whose
written config differs from the one the sweep would write now stops the
sweep instead of mixing two recipes in one table.

Outputs (``--out-dir``, default the work dir): ``sweep_table.md``,
``sweep_table.csv``, ``sweep_table.json`` (one row per variant and target,
mean +- population std over seeds of the held-out target's Dice / ASD /
HD95 per structure, and a ``mean`` row per variant: the mean over targets of
each seed, then mean +- std over seeds; with the device, the git commit and
the SHA-256 of every run's config) and ``sweep_dice.png`` (Dice per
structure, grouped by target, one bar per variant, std as error bars).
"""

import argparse
import copy
import csv
import glob
import hashlib
import importlib.util
import json
import logging
import math
import os
import os.path as osp
import platform
import pprint
import re
import shlex
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
from mmengine.config import Config, DictAction
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS

from mmseg_dfq.config import check_option_keys
from mmseg_dfq.datasets.samplers import check_domain_mix_batch_size

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
DATASET_BASES = osp.join(REPO, 'configs', '_base_', 'datasets')

# Built-in benchmarks: name -> glob of their split bases (one per held-out
# domain, k = the trailing number).
BENCHMARKS = OrderedDict(
    [
        ('fundus', osp.join(DATASET_BASES, 'fundus_dg_d[0-9]*.py')),
        ('prostate', osp.join(DATASET_BASES, 'prostate_dg_d[0-9]*.py')),
    ]
)

# Variant name -> dict(config=..., model=..., overrides=...):
#   config: config file, relative to the repo or absolute; '{benchmark}' and
#       '{k}' are filled per split (the repo has one file per split).
#   model (optional): a model base whose ``model`` replaces the config's
#       before the overrides (a variant that differs only by its model).
#   overrides (optional): --cfg-options-style keys set on top.
# Adding a variant is one entry here.
VARIANTS = OrderedDict(
    [
        ('dfq', dict(config='configs/dfq/dfq_mit-b2_{benchmark}_d{k}.py')),
        (
            'segformer',
            dict(
                config='configs/ablation/segformer_mit-b2_{benchmark}_d{k}.py'
            ),
        ),
        (
            'dfqhead',
            dict(config='configs/ablation/dfqhead_mit-b2_{benchmark}_d{k}.py'),
        ),
        # The authors' published RDWT grouping on backbone and loss alike.
        (
            'dfq-authors-layout',
            dict(
                config='configs/dfq/dfq_mit-b2_{benchmark}_d{k}.py',
                overrides={
                    'model.backbone.rdwt_layout': 'authors',
                    'model.decode_head.loss_rdwt.layout': 'authors',
                },
            ),
        ),
    ]
)

# Keys a split base contributes: which domains each dataloader reads and the
# per-source counts of the domain-mix sampler.
SPLIT_KEYS = (
    ('train_dataloader', 'dataset', 'domains'),
    ('train_dataloader', 'sampler', 'domain_counts'),
    ('val_dataloader', 'dataset', 'domains'),
    ('val_dataloader', 'dataset', 'unseen_domains'),
    ('test_dataloader', 'dataset', 'domains'),
    ('test_dataloader', 'dataset', 'unseen_domains'),
)
METRICS = ('Dice', 'ASD', 'HD95')
OUT_NAME = 'sweep_table'


class SweepError(Exception):
    """A sweep that cannot run or be collected as asked."""


# ---------------------------------------------------------------------- #
# Splits and variants
# ---------------------------------------------------------------------- #
def _get(cfg, path):
    node = cfg
    for key in path:
        # Config and ConfigDict alike (Config is no dict subclass).
        if not hasattr(node, 'get'):
            return None
        node = node.get(key)
    return node


def _declared(dataset_cfg, key):
    """One declared fact of a dataset config: its type's METAINFO with the
    config's own ``metainfo`` on top (a MultiSiteDataset declares all of
    them in the config)."""
    import mmseg_dfq  # noqa: F401  (registers the DG datasets)

    cls = DATASETS.get(dataset_cfg.get('type', ''))
    meta = dict(getattr(cls, 'METAINFO', {}) or {})
    meta.update(dataset_cfg.get('metainfo') or {})
    return meta.get(key)


def _domain_names(dataset_cfg, domains, where):
    """Display names of domain indices via the dataset's declared domains."""
    names = _declared(dataset_cfg, 'domains')
    out = []
    for d in domains:
        if isinstance(d, str):
            out.append(d)
        elif names is not None and 1 <= d <= len(names):
            out.append(names[d - 1])
        else:
            raise SweepError(
                f'{where}: domain {d!r} has no name (dataset type '
                f'{dataset_cfg.get("type")!r} declares no domain name for '
                'it)'
            )
    return out


def load_split(path, k):
    """Read one split base: its held-out target and its domain keys.

    Args:
        path (str): The split base (a dataset config).
        k (int): 1-based number of the split in its benchmark.

    Raises:
        SweepError: If the file lacks the sources or the held-out domain.

    Returns:
        dict: ``name`` (file stem), ``k``, ``path``, ``target`` (display
        name of the held-out domain) and ``keys`` (dotted key -> value).
    """
    if not osp.isfile(path):
        raise SweepError(f'split base {path!r} does not exist')
    cfg = Config.fromfile(path)
    sources = _get(cfg, SPLIT_KEYS[0])
    unseen = _get(cfg, ('test_dataloader', 'dataset', 'unseen_domains'))
    if not sources:
        raise SweepError(
            f'{path}: a split base needs train_dataloader.dataset.domains '
            '(the source domains)'
        )
    if not unseen or len(unseen) != 1:
        raise SweepError(
            f'{path}: a split base needs exactly one held-out domain in '
            f'test_dataloader.dataset.unseen_domains, got {unseen!r}'
        )
    dataset = cfg.test_dataloader.dataset
    (target,) = _domain_names(dataset, unseen, path)
    keys = OrderedDict()
    for key in SPLIT_KEYS:
        value = _get(cfg, key)
        if isinstance(value, dict):
            # Counts keyed by domain: replace the recipe's dict (merged key
            # by key, its other domains would stay) instead of merging.
            keys['.'.join(key)] = {'_delete_': True, **value}
        elif value is not None:
            keys['.'.join(key)] = list(value)
    name = osp.splitext(osp.basename(path))[0]
    return dict(name=name, k=k, path=path, target=target, keys=keys)


def _per_split_counts(options: dict, cfg) -> dict:
    """``options`` with a list of domain counts given to this split.

    A list ``train_dataloader.sampler.domain_counts`` (one count per source
    domain, e.g. from ``tools/benchmark_dg.py``, whose splits train on other
    domains) becomes a dict keyed by the split's training domains in their
    order, replacing the split's counts: the sampler's positional list
    form is deprecated.
    """
    key = 'train_dataloader.sampler.domain_counts'
    counts = options.get(key)
    if not isinstance(counts, (list, tuple)):
        return options
    domains = list(_get(cfg, SPLIT_KEYS[0]) or [])
    if len(counts) != len(domains):
        raise SweepError(
            f'--cfg-options {key}={list(counts)} gives {len(counts)} counts, '
            f'but the split trains on {len(domains)} domains {domains}'
        )
    return {
        **options,
        key: {'_delete_': True, **dict(zip(domains, counts))},
    }


def resolve_benchmark(spec):
    """Turn ``--benchmark`` into its name and split bases.

    Args:
        spec (list[str]): ``['fundus']``, ``['prostate']`` or split base
            files / glob patterns.

    Raises:
        SweepError: If nothing matches.

    Returns:
        tuple[str, list[dict]]: The benchmark name ('fundus', 'prostate' or
        'custom') and its splits (:func:`load_split`), in order.
    """
    if len(spec) == 1 and spec[0] in BENCHMARKS:
        name = spec[0]
        paths = glob.glob(BENCHMARKS[name])

        def number(p):
            return int(re.search(r'_d(\d+)\.py$', p).group(1))

        paths = sorted(paths, key=number)
        numbers = [number(p) for p in paths]
    else:
        name = 'custom'
        paths = []
        for item in spec:
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not found:
                raise SweepError(f'--benchmark: {item!r} matches no file')
            paths.extend(found)
        numbers = list(range(1, len(paths) + 1))
    if not paths:
        raise SweepError(f'--benchmark {spec}: no split bases found')
    return name, [load_split(p, k) for p, k in zip(paths, numbers)]


def parse_variant(tokens):
    """Parse one ``--variant SPEC [KEY=VALUE ...]``.

    Args:
        tokens (list[str]): ``[SPEC, KEY=VALUE, ...]``; SPEC is a name of
            :data:`VARIANTS` or a config path, optionally ``LABEL=SPEC``.

    Raises:
        SweepError: If SPEC is neither a known variant nor an existing file
            (after filling ``{benchmark}`` / ``{k}`` it is checked per
            split).

    Returns:
        dict: ``label``, ``config``, ``model`` (or None) and ``overrides``.
    """
    spec, rest = tokens[0], tokens[1:]
    label = None
    if '=' in spec:
        label, spec = spec.split('=', 1)
    if spec in VARIANTS:
        entry = VARIANTS[spec]
        variant = dict(
            label=label or spec,
            config=entry['config'],
            model=entry.get('model'),
            overrides=dict(entry.get('overrides', {})),
        )
    else:
        if '{' not in spec and not osp.isfile(spec):
            raise SweepError(
                f'--variant {spec!r}: neither a variant of {list(VARIANTS)} '
                'nor an existing config file'
            )
        stem = osp.splitext(osp.basename(spec))[0]
        variant = dict(
            label=label or stem.replace('{', '').replace('}', ''),
            config=spec,
            model=None,
            overrides={},
        )
    if rest:
        sub = argparse.ArgumentParser(prog=f'--variant {tokens[0]}')
        sub.add_argument('opts', nargs='+', action=DictAction)
        variant['overrides'].update(sub.parse_args(rest).opts)
    return variant


_CONFIGS = {}


def _load_config(path):
    # Parsing a config (and its mmseg:: bases) takes about a second; a
    # sweep reads each variant's file once and copies it per run.
    if path not in _CONFIGS:
        _CONFIGS[path] = Config.fromfile(path)
    return copy.deepcopy(_CONFIGS[path])


def config_text(cfg, label, split):
    """A config as a flat Python file (no ``_base_``), loadable by mmengine.

    ``pprint`` of the resolved dict rather than mmengine's yapf-formatted
    ``pretty_text``, which takes ~0.2 s a config.

    Args:
        cfg (mmengine.Config): The composed config.
        label (str): Variant label, for the header comment.
        split (str): Split name, for the header comment.

    Returns:
        str: The file's content.
    """
    lines = [
        f'# tools/sweep.py: variant {label!r}, split {split!r}; flattened, '
        'edit the sources instead.'
    ]
    for key, value in cfg.to_dict().items():
        text = pprint.pformat(value, width=79, sort_dicts=False)
        lines.append(f'{key} = {text}')
    return '\n'.join(lines) + '\n'


def _repo_path(path):
    return path if osp.isabs(path) else osp.join(REPO, path)


# ---------------------------------------------------------------------- #
# Runs
# ---------------------------------------------------------------------- #
def final_checkpoint_name(cfg, where):
    """Name of the checkpoint the end of training writes.

    Args:
        cfg (mmengine.Config): The run's config.
        where (str): Config file, for the error message.

    Raises:
        SweepError: If the config cannot produce a final checkpoint.

    Returns:
        str: ``iter_<max_iters>.pth`` or ``epoch_<max_epochs>.pth``.
    """
    if not _get(cfg, ('default_hooks', 'checkpoint')):
        raise SweepError(
            f'{where}: default_hooks.checkpoint is off; the sweep tests the '
            'final checkpoint, so training must write one'
        )
    train_cfg = cfg.get('train_cfg') or {}
    loop = train_cfg.get('type', '')
    by_epoch = train_cfg.get('by_epoch', 'Epoch' in loop)
    if by_epoch and 'max_epochs' in train_cfg:
        return f'epoch_{train_cfg["max_epochs"]}.pth'
    if not by_epoch and 'max_iters' in train_cfg:
        return f'iter_{train_cfg["max_iters"]}.pth'
    raise SweepError(
        f'{where}: cannot tell the final checkpoint from train_cfg '
        f'{dict(train_cfg)!r} (needs max_iters or max_epochs)'
    )


def build_run(variant, split, seed, args, benchmark):
    """Compose one run's config (not written yet).

    Args:
        variant (dict): From :func:`parse_variant`.
        split (dict): From :func:`load_split`.
        seed (int | None): ``randomness.seed``; None keeps the config's.
        args (argparse.Namespace): Parsed command line.
        benchmark (str): Benchmark name, for ``{benchmark}`` in paths.

    Raises:
        SweepError: If the variant has no config for this split.

    Returns:
        dict: ``variant``, ``split``, ``target``, ``k``, ``seed``,
        ``run_dir``, ``config`` (path to write), ``text`` (its content),
        ``sha256``, ``checkpoint`` and ``metrics`` (paths).
    """
    src = _repo_path(
        variant['config'].format(benchmark=benchmark, k=split['k'])
    )
    if not osp.isfile(src):
        raise SweepError(
            f'variant {variant["label"]!r} has no config for split '
            f'{split["name"]} (looked for {src}); give a config path as '
            'the variant'
        )
    cfg = _load_config(src)
    if variant['model']:
        cfg.model = _load_config(_repo_path(variant['model'])).model
    # A dataloader the recipe switched off (e.g. no validation) stays off.
    cfg.merge_from_dict(
        {
            key: value
            for key, value in split['keys'].items()
            if cfg.get(key.split('.')[0])
        }
    )
    cfg.merge_from_dict(variant['overrides'])
    if args.data_root:
        for loader in (
            'train_dataloader',
            'val_dataloader',
            'test_dataloader',
        ):
            if cfg.get(loader):
                cfg[loader].dataset.data_root = args.data_root
    if args.cfg_options:
        try:
            check_option_keys(cfg, args.cfg_options, src)
        except ValueError as err:
            raise SweepError(str(err)) from None
        cfg.merge_from_dict(_per_split_counts(args.cfg_options, cfg))
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    if cfg.get('train_dataloader'):
        # Stop before any run trains, not when the bad one's turn comes.
        try:
            check_domain_mix_batch_size(cfg.train_dataloader)
        except ValueError as err:
            raise SweepError(
                f'variant {variant["label"]!r}, split {split["name"]}: {err}'
            ) from None
    run_dir = osp.join(args.work_dir, variant['label'], split['name'])
    name = f'{variant["label"]}_{split["name"]}'
    if seed is not None:
        run_dir = osp.join(run_dir, f'seed{seed}')
        name += f'_seed{seed}'
    # The file name is the Runner's experiment name: unique per run, so
    # runs of one process never share a logger or visualizer instance. Not
    # in run_dir: the Runner dumps its own (resume=True) copy there under
    # the same name.
    config = osp.join(args.work_dir, 'configs', f'{name}.py')
    cfg.work_dir = run_dir
    if cfg.get('visualizer'):
        # mmengine keeps one visualizer per name and process, and mmseg's
        # runtime names it 'visualizer': a later run in the same process
        # would write into the first run's folder.
        cfg.visualizer.name = name
    text = config_text(cfg, variant['label'], split['name'])
    # Table columns in the metric's structure order (OD before OC): the
    # evaluator's own, else the test dataset's METAINFO.
    evaluator = cfg.get('test_evaluator') or {}
    structures = (
        evaluator.get('structures') if isinstance(evaluator, dict) else None
    )
    if not structures:
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
            structures = _declared(cfg.test_dataloader.dataset, 'structures')
    structures = list(structures or {})
    return dict(
        variant=variant['label'],
        split=split['name'],
        target=split['target'],
        k=split['k'],
        seed=seed,
        run_dir=run_dir,
        config=config,
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        checkpoint=osp.join(run_dir, final_checkpoint_name(cfg, src)),
        metrics=osp.join(run_dir, 'metrics.json'),
        structures=structures,
    )


def run_state(run):
    """'done', 'trained' (checkpoint, no readable metrics) or 'todo'.

    A metrics JSON that does not parse (a test killed while an older tool
    wrote it in place) counts as missing: the run is tested again.
    """
    if osp.isfile(run['checkpoint']):
        return 'done' if _readable_json(run['metrics']) else 'trained'
    return 'todo'


def _readable_json(path) -> bool:
    if not osp.isfile(path):
        return False
    try:
        with open(path) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def write_config(run):
    """Write the run's config unless the same text is already there.

    Raises:
        SweepError: If a different config is there next to results of it.
    """
    if osp.isfile(run['config']):
        with open(run['config']) as f:
            old = f.read()
        if old == run['text']:
            return
        if glob.glob(osp.join(run['run_dir'], '*.pth')) or osp.isfile(
            run['metrics']
        ):
            raise SweepError(
                f'{run["config"]}: this run was made with a different config '
                'than the sweep would write now; use another --work-dir or '
                'remove the folder to rerun it'
            )
    os.makedirs(osp.dirname(run['config']), exist_ok=True)
    with open(run['config'], 'w') as f:
        f.write(run['text'])


def commands(run):
    """The train and test argv of one run (for tools/train.py, test.py)."""
    train = [run['config'], '--work-dir', run['run_dir'], '--resume']
    test = [
        run['config'],
        run['checkpoint'],
        '--work-dir',
        run['run_dir'],
        '--metrics-json',
        run['metrics'],
    ]
    return train, test


def shell_lines(run, partition=None):
    """The shell command (train && test) of one run.

    Args:
        run (dict): From :func:`build_run`.
        partition (str, optional): Use ``tools/slurm_{train,test}.sh`` on
            this slurm partition (one GPU) instead of plain python.

    Returns:
        str: ``<train command> && <test command>``.
    """
    train, test = commands(run)
    if partition:
        name = f'{run["variant"]}_{run["split"]}'
        parts = [
            [osp.join(TOOLS, f'slurm_{tool}.sh'), partition, name] + argv
            for tool, argv in (('train', train), ('test', test))
        ]
        pre = 'GPUS=1 GPUS_PER_NODE=1 '
    else:
        parts = [
            [sys.executable, osp.join(TOOLS, f'{tool}.py')] + argv
            for tool, argv in (('train', train), ('test', test))
        ]
        pre = ''
    return ' && '.join(pre + ' '.join(map(shlex.quote, p)) for p in parts)


def write_job_array(path, runs, partition=None):
    """Write an sbatch job-array script, one task per run.

    Args:
        path (str): The script to write.
        runs (list[dict]): Runs still to do.
        partition (str, optional): ``#SBATCH --partition``.
    """
    lines = [
        '#!/usr/bin/env bash',
        f'#SBATCH --array=0-{len(runs) - 1}',
        '#SBATCH --gres=gpu:1',
        '#SBATCH --job-name=dfq-sweep',
    ]
    if partition:
        lines.append(f'#SBATCH --partition={partition}')
    lines += [
        '# Written by tools/sweep.py; afterwards collect the table with',
        '#   python tools/sweep.py ... --collect',
        'set -e',
        f'export PYTHONPATH={shlex.quote(REPO)}:$PYTHONPATH',
        'RUNS=(',
    ]
    lines += [f'  {shlex.quote(shell_lines(r))}' for r in runs]
    lines += [')', 'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


_TOOL_MODULES = {}


def _tool(name):
    """Load tools/<name>.py once (the tools folder is not a package)."""
    if name not in _TOOL_MODULES:
        spec = importlib.util.spec_from_file_location(
            f'dfq_tools_{name}', osp.join(TOOLS, f'{name}.py')
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOL_MODULES[name] = module
    return _TOOL_MODULES[name]


def _close_file_handlers():
    # Each Runner adds a file handler to its logger; in one process they
    # would pile up (and keep dozens of log files open).
    from mmengine.logging import MMLogger

    for logger in MMLogger._instance_dict.values():
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()


def execute(run, launch):
    """Train (unless trained) and test one run.

    Args:
        run (dict): From :func:`build_run`, its config written.
        launch (str): 'inprocess' or 'subprocess'.

    Raises:
        SweepError: If a tool fails or leaves no checkpoint/metrics.

    Returns:
        dict: ``train_seconds`` (None when only tested) and
        ``test_seconds``.
    """
    train, test = commands(run)
    times = dict(train_seconds=None)
    steps = [('test', test)]
    if run_state(run) == 'todo':
        steps.insert(0, ('train', train))
    for tool, argv in steps:
        start = time.time()
        if launch == 'subprocess':
            proc = subprocess.run(
                [sys.executable, osp.join(TOOLS, f'{tool}.py')] + argv
            )
            if proc.returncode != 0:
                raise SweepError(
                    f'{run["config"]}: tools/{tool}.py exited with '
                    f'{proc.returncode}'
                )
        else:
            try:
                _tool(tool).main(argv)
            finally:
                _close_file_handlers()
        times[f'{tool}_seconds'] = time.time() - start
        expected = run['checkpoint'] if tool == 'train' else run['metrics']
        if not osp.isfile(expected):
            raise SweepError(
                f'{run["config"]}: tools/{tool}.py finished without '
                f'writing {expected}'
            )
    return times


# ---------------------------------------------------------------------- #
# Provenance
# ---------------------------------------------------------------------- #
def this_device():
    """The accelerator (or CPU) this process trains on, in words."""
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f'{n} x {torch.cuda.get_device_name(0)}'
    cpu = platform.processor() or platform.machine()
    return f'CPU ({cpu}, {os.cpu_count()} cores, no GPU)'


def device_from_logs(run_dir):
    """The device mmengine's environment log of a run names, if any."""
    for log in sorted(glob.glob(osp.join(run_dir, '*', '*.log'))):
        with open(log, errors='replace') as f:
            text = f.read(200_000)
        gpu = re.search(r'^\s*GPU [\d,]+: (.+)$', text, re.M)
        if gpu:
            return gpu.group(1).strip()
        if re.search(r'CUDA available: False', text):
            return 'CPU (no GPU)'
    return None


def git_commit():
    """``git rev-parse HEAD`` of the repo, '+dirty' with local changes."""
    try:
        head = subprocess.run(
            ['git', '-C', REPO, 'rev-parse', 'HEAD'],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ['git', '-C', REPO, 'status', '--porcelain', '-uno'],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'
    return head + ('+dirty' if dirty else '')


# ---------------------------------------------------------------------- #
# Table
# ---------------------------------------------------------------------- #
def _number(value):
    return math.nan if value is None else float(value)


def read_run(run):
    """Load a finished run's metrics and provenance.

    Args:
        run (dict): From :func:`build_run`.

    Raises:
        SweepError: If the metrics JSON lacks the held-out target.

    Returns:
        dict: ``run`` plus ``results`` (the whole JSON), ``values``
        (``'<structure>_<metric>'`` of the target) and ``device``.
        ``metrics`` stays the JSON's path; ``results`` is its content.
    """
    with open(run['metrics']) as f:
        metrics = json.load(f)
    prefix = f'{run["target"]}/'
    values = OrderedDict()
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix) :]
        if field.rsplit('_', 1)[-1] in METRICS:
            values[field] = _number(value)
    if not values:
        raise SweepError(
            f'{run["metrics"]}: no metrics of the held-out target '
            f'{run["target"]!r} (keys like {prefix}OD_Dice); got '
            f'{sorted(metrics)[:8]}...'
        )
    meta_path = osp.join(run['run_dir'], 'sweep_run.json')
    meta = {}
    if osp.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    device = meta.get('device') or device_from_logs(run['run_dir'])
    return dict(
        run,
        results=metrics,
        values=values,
        device=device or 'not recorded',
        train_seconds=meta.get('train_seconds'),
        test_seconds=meta.get('test_seconds'),
    )


def _stats(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std())


def aggregate(records, variants, targets):
    """Mean +- population std over seeds per variant and target.

    Args:
        records (list[dict]): From :func:`read_run`.
        variants (list[str]): Variant labels in row order.
        targets (list[str]): Targets in row order.

    Returns:
        tuple[list[str], list[dict]]: Columns (``'<structure>_<metric>'``)
        and rows: ``variant``, ``target`` (or 'mean'), ``seeds``,
        ``values`` (column -> (mean, std)).
    """
    columns = []
    for record in records:
        for key in record['values']:
            if key not in columns:
                columns.append(key)
    order = [s for r in records for s in r['structures']]

    def rank(column):
        structure, metric = column.rsplit('_', 1)
        first = order.index(structure) if structure in order else len(order)
        return first, structure, METRICS.index(metric)

    columns.sort(key=rank)
    rows = []
    for variant in variants:
        per_target = OrderedDict()
        for target in targets:
            runs = [
                r
                for r in records
                if r['variant'] == variant and r['target'] == target
            ]
            if not runs:
                continue
            runs.sort(key=lambda r: (r['seed'] is None, r['seed']))
            per_target[target] = runs
            rows.append(
                dict(
                    variant=variant,
                    target=target,
                    seeds=[r['seed'] for r in runs],
                    values={
                        c: _stats([r['values'].get(c, math.nan) for r in runs])
                        for c in columns
                    },
                )
            )
        seed_sets = {
            tuple(r['seed'] for r in runs) for runs in per_target.values()
        }
        if len(per_target) > 1 and len(seed_sets) == 1:
            # Per seed the mean over targets, then the spread over seeds.
            (seeds,) = seed_sets
            values = {}
            for c in columns:
                per_seed = [
                    np.mean(
                        [
                            runs[i]['values'].get(c, math.nan)
                            for runs in per_target.values()
                        ]
                    )
                    for i in range(len(seeds))
                ]
                values[c] = _stats(per_seed)
            rows.append(
                dict(
                    variant=variant,
                    target='mean',
                    seeds=list(seeds),
                    values=values,
                )
            )
    return columns, rows


def _cell(mean, std, n):
    if math.isnan(mean):
        return 'n/a'
    return f'{mean:.2f} +- {std:.2f}' if n > 1 else f'{mean:.2f}'


def _json_number(x):
    return x if math.isfinite(x) else None


def write_tables(out_dir, columns, rows, records, meta):
    """Write sweep_table.{md,csv,json}.

    Args:
        out_dir (str): Folder for the files.
        columns (list[str]): From :func:`aggregate`.
        rows (list[dict]): From :func:`aggregate`.
        records (list[dict]): From :func:`read_run`.
        meta (dict): Provenance: ``benchmark``, ``commit``, ``devices``,
            ``date``, ``command``.

    Returns:
        dict: Path of each format.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        e: osp.join(out_dir, f'{OUT_NAME}.{e}') for e in ('md', 'csv', 'json')
    }
    header = ['Variant', 'Target'] + [c.replace('_', ' ') for c in columns]
    lines = [
        f'Held-out target per split ({meta["benchmark"]}): mean +- '
        'population std over seeds; `mean` = mean over targets per seed, '
        "then over seeds. Dice in %, ASD / HD95 in the metric's units "
        '(pixels for fundus, mm for NIfTI volumes).',
        '',
        '| ' + ' | '.join(header) + ' |',
        '|' + '---|' * len(header),
    ]
    for row in rows:
        n = len(row['seeds'])
        cells = [_cell(*row['values'][c], n) for c in columns]
        target = (
            f'**{row["target"]}**'
            if row['target'] == 'mean'
            else row['target']
        )
        lines.append(
            '| ' + ' | '.join([row['variant'], target] + cells) + ' |'
        )
    seeds = sorted({r['seed'] for r in records if r['seed'] is not None})
    seeds = ', '.join(map(str, seeds)) or "each config's randomness.seed"
    lines += [
        '',
        f'Seeds: {seeds}. Device: {"; ".join(meta["devices"])}. '
        f'Commit: `{meta["commit"]}`. Written {meta["date"]}.',
        '',
        '| Run | config SHA-256 (first 12) |',
        '|---|---|',
    ]
    for r in records:
        rel = osp.relpath(r['config'], meta['work_dir'])
        lines.append(f'| {rel} | `{r["sha256"][:12]}` |')
    with open(paths['md'], 'w') as f:
        f.write('\n'.join(lines) + '\n')

    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(
            ['variant', 'target', 'n_seeds', 'seeds']
            + [f'{c}_{s}' for c in columns for s in ('mean', 'std')]
        )
        for row in rows:
            writer.writerow(
                [row['variant'], row['target'], len(row['seeds']),
                 ' '.join(str(s) for s in row['seeds'])]
                + [repr(v) for c in columns for v in row['values'][c]]
            )  # fmt: skip

    data = dict(
        meta=meta,
        columns=columns,
        rows=[
            dict(
                variant=row['variant'],
                target=row['target'],
                seeds=row['seeds'],
                values={
                    c: dict(mean=_json_number(m), std=_json_number(s))
                    for c, (m, s) in row['values'].items()
                },
            )
            for row in rows
        ],
        runs=[
            dict(
                variant=r['variant'],
                split=r['split'],
                target=r['target'],
                seed=r['seed'],
                config=r['config'],
                config_sha256=r['sha256'],
                metrics_json=r['metrics'],
                device=r['device'],
                train_seconds=r['train_seconds'],
                test_seconds=r['test_seconds'],
                values={k: _json_number(v) for k, v in r['values'].items()},
            )
            for r in records
        ],
    )
    with open(paths['json'], 'w') as f:
        json.dump(data, f, indent=2)
    return paths


def plot_dice(path, columns, rows, variants):
    """Bar chart of Dice per structure: targets on x, one bar per variant.

    Args:
        path (str): The PNG to write.
        columns (list[str]): From :func:`aggregate`.
        rows (list[dict]): From :func:`aggregate`.
        variants (list[str]): Variant labels, bar order.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dice = [c for c in columns if c.endswith('_Dice')]
    targets = []
    for row in rows:
        if row['target'] not in targets:
            targets.append(row['target'])
    targets = [t for t in targets if t != 'mean'] + (
        ['mean'] if 'mean' in targets else []
    )
    fig, axes = plt.subplots(
        1, len(dice), squeeze=False,
        figsize=(max(4.0, 1.2 * len(targets) * len(dice) + 2), 3.6),
    )  # fmt: skip
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(targets))
    for ax, column in zip(axes[0], dice):
        for i, variant in enumerate(variants):
            means, stds = [], []
            for target in targets:
                found = [
                    r
                    for r in rows
                    if r['variant'] == variant and r['target'] == target
                ]
                m, s = found[0]['values'][column] if found else (math.nan, 0.0)
                means.append(m)
                stds.append(s)
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width,
                   yerr=stds, capsize=2, label=variant)  # fmt: skip
        ax.set_xticks(x)
        ax.set_xticklabels(targets, rotation=30, ha='right')
        ax.set_ylim(0, 100)
        ax.set_title(column.replace('_', ' ') + ' (%)')
    axes[0][0].legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- #
# Driver
# ---------------------------------------------------------------------- #
def plan(args):
    """Every run of the sweep, in (split, seed, variant) order."""
    benchmark, splits = resolve_benchmark(args.benchmark)
    if args.targets:
        known = {s['k'] for s in splits}
        unknown = sorted(set(args.targets) - known)
        if unknown:
            raise SweepError(
                f'--targets {unknown}: the benchmark has splits '
                f'{sorted(known)}'
            )
        splits = [s for s in splits if s['k'] in args.targets]
    # Entries may also be parse_variant-style dicts (tools/benchmark_dg.py).
    variants = [
        v if isinstance(v, dict) else parse_variant(v) for v in args.variant
    ]
    labels = [v['label'] for v in variants]
    if len(set(labels)) != len(labels):
        raise SweepError(
            f'variant labels must be unique, got {labels}; name them with '
            'LABEL=SPEC'
        )
    seeds = args.seeds or [None]
    runs = [
        build_run(v, split, seed, args, benchmark)
        for split in splits
        for seed in seeds
        for v in variants
    ]
    return benchmark, labels, [s['target'] for s in splits], runs


def sweep(args, log=print):
    """Run (or collect) the sweep and write the table and the plot.

    Args:
        args (argparse.Namespace): As :func:`parse_args` returns.
        log (callable): Progress printer. Default: print.

    Raises:
        SweepError: On a bad benchmark/variant, a failing run, or (with
            ``--collect``) missing results.

    Returns:
        dict: ``records`` (:func:`read_run` per run), ``columns``, ``rows``
        and ``paths`` (the written files); with ``--print-commands`` or
        ``--job-array`` only ``commands``.
    """
    args.work_dir = osp.abspath(args.work_dir)
    benchmark, variants, targets, runs = plan(args)
    if args.print_commands or args.job_array:
        todo = [r for r in runs if run_state(r) != 'done']
        for run in todo:
            write_config(run)
        lines = [shell_lines(r, args.slurm_partition) for r in todo]
        if args.job_array and todo:
            write_job_array(args.job_array, todo, args.slurm_partition)
            log(f'Job array of {len(todo)} runs written to {args.job_array}')
        if args.print_commands:
            for line in lines:
                log(line)
        return dict(commands=lines)

    device = this_device()
    commit = git_commit()
    if args.collect:
        missing = [r['run_dir'] for r in runs if run_state(r) != 'done']
        if missing:
            raise SweepError(
                f'--collect: {len(missing)} of {len(runs)} runs have no final '
                'checkpoint and metrics.json yet, e.g. '
                + ', '.join(missing[:3])
            )
        for run in runs:
            write_config(run)  # refuses runs made with another config
    else:
        for i, run in enumerate(runs, 1):
            write_config(run)
            state = run_state(run)
            what = f'[{i}/{len(runs)}] {run["variant"]} {run["split"]}' + (
                '' if run['seed'] is None else f' seed {run["seed"]}'
            )
            if state == 'done':
                log(f'{what}: done before, kept')
                continue
            times = execute(run, args.launch)
            meta = dict(times, device=device, commit=commit,
                        config_sha256=run['sha256'])  # fmt: skip
            with open(osp.join(run['run_dir'], 'sweep_run.json'), 'w') as f:
                json.dump(meta, f, indent=2)
            done = 'trained and tested' if times['train_seconds'] else 'tested'
            seconds = sum(v or 0 for v in times.values())
            log(f'{what}: {done} ({seconds:.0f} s)')
    records = [read_run(r) for r in runs]
    columns, rows = aggregate(records, variants, targets)
    meta = dict(
        benchmark=benchmark,
        commit=commit,
        devices=sorted({r['device'] for r in records}),
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        command=' '.join(map(shlex.quote, sys.argv)),
        work_dir=args.work_dir,
    )
    out_dir = args.out_dir or args.work_dir
    paths = write_tables(out_dir, columns, rows, records, meta)
    paths['png'] = osp.join(out_dir, 'sweep_dice.png')
    plot_dice(paths['png'], columns, rows, variants)
    return dict(records=records, columns=columns, rows=rows, paths=paths)


def build_parser():
    """The command line (shared with tools/benchmark_dg.py's docs)."""
    parser = argparse.ArgumentParser(
        description='Train and test every held-out split x variant x seed '
        'and write the per-target table (Markdown, CSV, JSON) and a plot.'
    )
    parser.add_argument(
        '--benchmark', nargs='+', default=['fundus'],
        help="'fundus', 'prostate', or split base files / glob patterns "
        '(default: fundus)',
    )  # fmt: skip
    parser.add_argument(
        '--variant', nargs='+', action='append', required=True,
        metavar='SPEC [KEY=VALUE',
        help=f'repeatable: a variant ({", ".join(VARIANTS)}) or config path '
        "('{benchmark}', '{k}' filled per split), LABEL=SPEC to name it, "
        'then --cfg-options for it alone',
    )  # fmt: skip
    parser.add_argument(
        '--seeds', type=int, nargs='+',
        help="training seeds (randomness.seed); default: the config's",
    )  # fmt: skip
    parser.add_argument(
        '--targets', type=int, nargs='+',
        help='only these splits (k of the held-out domain; default: all)',
    )  # fmt: skip
    parser.add_argument(
        '--work-dir', default='work_dirs/sweep',
        help='one folder per variant/split/seed (default: work_dirs/sweep)',
    )  # fmt: skip
    parser.add_argument(
        '--out-dir', help='tables and plot (default: work-dir)'
    )
    parser.add_argument(
        '--data-root', help='data root of every dataloader of every run'
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='overrides for every run (after the per-variant ones); a '
        'list train_dataloader.sampler.domain_counts gives each split its '
        'source domains\' counts in their order',
    )  # fmt: skip
    parser.add_argument(
        '--launch', choices=('inprocess', 'subprocess'), default='inprocess',
        help='run tools/train.py and tools/test.py in this process '
        '(default) or as child processes',
    )  # fmt: skip
    parser.add_argument(
        '--collect', action='store_true',
        help='train nothing: table the results already in --work-dir',
    )  # fmt: skip
    parser.add_argument(
        '--print-commands', action='store_true',
        help='write the configs and print the commands of unfinished runs',
    )  # fmt: skip
    parser.add_argument(
        '--slurm-partition',
        help='with --print-commands: tools/slurm_{train,test}.sh commands; '
        'with --job-array: #SBATCH --partition',
    )
    parser.add_argument(
        '--job-array',
        help='write an sbatch job-array script of unfinished runs',
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        result = sweep(args)
    except SweepError as err:
        raise SystemExit(f'tools/sweep.py: {err}') from None
    if 'paths' in result:
        with open(result['paths']['md']) as f:
            print(f.read())
        for kind, path in result['paths'].items():
            print(f'{kind}: {path}')


if __name__ == '__main__':
    main()
