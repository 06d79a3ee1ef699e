"""Config loading shared by the command-line tools, its checks, and the
hook list the configs share."""

import os.path as osp
from typing import Optional

from mmengine.config import Config

from .compat import adapt_cfg_to_device, iter_config_dicts
from .datasets.base import DomainSplitDataset, resolve_domains
from .datasets.samplers import (
    check_domain_mix_batch_size,
    config_type_name,
)

# The top-level keys mmengine's Runner reads from a config (Runner.from_cfg
# and mmengine's and mmseg's tools). A config may hold any other variable,
# so only a near miss of one of these is taken for a typo.
RUNNER_KEYS = (
    'model',
    'work_dir',
    'train_dataloader',
    'val_dataloader',
    'test_dataloader',
    'train_cfg',
    'val_cfg',
    'test_cfg',
    'auto_scale_lr',
    'optim_wrapper',
    'param_scheduler',
    'val_evaluator',
    'test_evaluator',
    'default_hooks',
    'custom_hooks',
    'data_preprocessor',
    'load_from',
    'resume',
    'launcher',
    'env_cfg',
    'log_processor',
    'log_level',
    'visualizer',
    'default_scope',
    'randomness',
    'experiment_name',
    'model_wrapper_cfg',
    'custom_imports',
    'tta_model',
    'tta_pipeline',
)


def reliability_hooks() -> list:
    """The schedules' reliability hooks, for a config's ``custom_hooks``.

    ``ExactResumeHook`` (``--resume`` repeats the uninterrupted run),
    ``PreemptionHook`` (SIGTERM / SIGUSR1 save a checkpoint and exit with
    status 75) and ``NonFiniteLossHook`` (a non-finite loss stops the run
    naming the batch's images); README "Reliability". A config that adds
    hooks lists these first: ``custom_hooks = reliability_hooks() + [...]``.

    Returns:
        list[dict]: New hook configs.
    """
    return [
        dict(type='ExactResumeHook'),
        dict(type='PreemptionHook', signals=('SIGTERM', 'SIGUSR1')),
        dict(type='NonFiniteLossHook', action='raise'),
    ]


def load_config(path, cfg_options=None, launcher='none', work_dir=None):
    """Read a config, apply CLI overrides and make it runnable on this host.

    Args:
        path (str): Config file.
        cfg_options (dict, optional): ``--cfg-options`` overrides.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'. Default: 'none'.
        work_dir (str, optional): Overrides the config's ``work_dir``; when
            neither is set, ``./work_dirs/<config name>``.

    Raises:
        FileNotFoundError: If the config file does not exist.
        ValueError: If the train batch size is not the sum of a
            ``DomainMixSampler``'s per-domain counts, or
            :func:`check_config` finds a problem.

    Returns:
        mmengine.Config: The config (adapted by
        :func:`mmseg_dfq.compat.adapt_cfg_to_device`).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        check_option_keys(cfg, cfg_options, path)
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join(
            './work_dirs', osp.splitext(osp.basename(path))[0]
        )
    if cfg.get('train_dataloader'):
        # A batch size other than the sum of the per-domain counts would
        # silently break the mix: stop here instead.
        check_domain_mix_batch_size(cfg.train_dataloader)
    check_config(cfg, path)
    return adapt_cfg_to_device(cfg)


def check_config(cfg: Config, path: str = 'config') -> None:
    """Stop on config mistakes that would otherwise run without a word.

    - a top-level key that is a near miss of a key the Runner reads (e.g.
      ``train_dataloder``): mmengine ignores unknown keys, so the base's
      value would silently be used;
    - a held-out (``unseen_domains``) domain of the validation or test set
      that the training set also loads from the same ``data_root``: its
      results would be reported as unseen;
    - a decode head whose ``num_classes`` is not the number of classes the
      training set declares (its ``METAINFO`` or the config's
      ``metainfo``); with the two-sigmoid form (``label_sets``), labels
      the data set does not have;
    - ``ChunkBN`` (DataParallel's BatchNorm in one process) under a
      distributed launcher;
    - mmseg's ``SegTTAModel`` (a softmax over channels) as the
      ``tta_model`` of a two-sigmoid ``MultiLabelEncoderDecoder``;
    - masks narrowed for the trip from the dataloader workers
      (``stack_seg_collate(mask_dtype=...)``) reaching a data preprocessor
      other than ``BatchSegDataPreProcessor``, the one that puts them back
      (the losses would get uint8 labels), or a ``mask_dtype`` that is not
      an integer dtype.

    Data sets other than this project's domain data sets, and models
    without a ``decode_head`` dict, are not checked.

    Args:
        cfg (Config): The merged config.
        path (str): The config's file, for messages. Default: 'config'.

    Raises:
        ValueError: On any of the above.
    """
    _check_top_level_keys(cfg, path)
    _check_mask_dtype(cfg, path)
    _check_tta_model(cfg, path)
    _check_chunk_bn(cfg, path)
    train = _domain_dataset(cfg.get('train_dataloader'))
    if train is not None:
        _check_held_out(cfg, train, path)
        _check_num_classes(cfg, train, path)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ca != cb),
                )
            )
        previous = current
    return previous[-1]


def _near_miss(
    key: str, known_keys=RUNNER_KEYS, allow_affixes: bool = False
) -> Optional[str]:
    """The known key that ``key`` looks like a typo of, if any.

    At most two edits away; unless ``allow_affixes``, not a longer or
    shorter name built on it (a config variable such as
    ``data_preprocessor_cfg`` is deliberate).
    """
    if key in known_keys or key.startswith('_') or len(key) < 6:
        return None
    for known in known_keys:
        if not isinstance(known, str):
            continue
        if not allow_affixes and (known in key or key in known):
            continue
        if _edit_distance(key, known) <= 2:
            return known
    return None


def _parameters(kind) -> list:
    """The keyword parameters a config ``type`` takes (mmseg's registries).

    A class's ``__init__`` parameters, followed up its bases while they
    pass ``**kwargs`` on; a function's parameters. Empty when the type is
    unknown.
    """
    import inspect

    import mmseg.registry as registries
    from mmengine.registry import Registry

    if isinstance(kind, str):
        name, kind = kind, None
        for registry in vars(registries).values():
            if isinstance(registry, Registry):
                try:
                    kind = registry.get(name)
                except Exception:  # a registry that cannot import a scope
                    kind = None
                if kind is not None:
                    break
    if kind is None or not callable(kind):
        return []
    functions = (
        [
            k.__dict__['__init__']
            for k in kind.__mro__
            if '__init__' in k.__dict__
        ]
        if isinstance(kind, type)
        else [kind]
    )
    params = []
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            break
        params += [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in ('self', *params)
        ]
        if not any(
            p.kind == p.VAR_KEYWORD for p in signature.parameters.values()
        ):
            break
    return params


def check_option_keys(cfg: Config, cfg_options: dict, path: str) -> None:
    """Stop on a ``--cfg-options`` key that is a near miss of a config key.

    mmengine adds an unknown key as given, so ``train_cfg.max_iter=2`` or
    ``train_dataloader.dataset.dataroot=...`` would otherwise reach a
    constructor as an unexpected argument (a ``TypeError`` without the
    key's path) or, in a dict nobody checks, be ignored. Each key is
    followed into the config; the first part that is not there is accepted
    if the dict's ``type`` takes it as a parameter, else compared with its
    siblings and those parameters (and, at the top, with the Runner's
    keys).

    Args:
        cfg (Config): The config before the options are merged.
        cfg_options (dict): ``--cfg-options`` (dotted keys -> values).
        path (str): The config's file, for messages.

    Raises:
        ValueError: Naming the option and the key it looks like.
    """
    for dotted in cfg_options:
        parts = str(dotted).split('.')
        node = cfg
        for i, part in enumerate(parts):
            if isinstance(node, (list, tuple)):
                if not part.isdigit() or int(part) >= len(node):
                    break
                node = node[int(part)]
                continue
            if not hasattr(node, 'keys') or part in node.keys():
                if not hasattr(node, 'keys'):
                    break
                node = node[part]
                continue
            siblings = list(node.keys())
            if i == 0:
                siblings += [k for k in RUNNER_KEYS if k not in siblings]
            params = _parameters(node.get('type'))
            if part in params:
                break  # a parameter the config leaves at its default
            siblings += [k for k in params if k not in siblings]
            known = _near_miss(part, siblings, allow_affixes=i > 0)
            if known is not None:
                where = '.'.join(parts[:i])
                full = f'{where}.{known}' if where else known
                raise ValueError(
                    f'--cfg-options {dotted}: {path} has no key '
                    f'{".".join(parts[: i + 1])!r}; did you mean {full!r}? '
                    '(an unknown key is added as given)'
                )
            break


def _check_top_level_keys(cfg: Config, path: str) -> None:
    for key in cfg.keys():
        known = _near_miss(key)
        if known is not None:
            raise ValueError(
                f'{path}: unknown top-level key {key!r}; did you mean '
                f'{known!r}? (mmengine ignores unknown keys, so {known!r} '
                'would keep its base value)'
            )


def _check_chunk_bn(cfg: Config, path: str) -> None:
    launcher = cfg.get('launcher', 'none')
    if launcher not in (None, 'none') and any(
        config_type_name(d.get('type')) == 'ChunkBN'
        for d in iter_config_dicts(cfg.get('model'))
    ):
        raise ValueError(
            f'{path}: ChunkBN emulates DataParallel in one process, but '
            f'launcher={launcher!r} runs several, each already holding a '
            "part of the batch: use norm_cfg=dict(type='SyncBN') (e.g. "
            '--cfg-options model.decode_head.norm_cfg._delete_=True '
            'model.decode_head.norm_cfg.type=SyncBN) or run on one process'
        )


def _check_tta_model(cfg: Config, path: str) -> None:
    model, tta = cfg.get('model') or {}, cfg.get('tta_model') or {}
    name = config_type_name(tta.get('type', ''))
    if (
        model.get('type') == 'MultiLabelEncoderDecoder'
        and name == 'SegTTAModel'
    ):
        raise ValueError(
            f"{path}: tta_model is mmseg's SegTTAModel, whose softmax over "
            'the channels and arg-max give channel indices as labels for '
            "MultiLabelEncoderDecoder's sigmoid channels: use "
            "tta_model = dict(type='MultiLabelTTAModel')"
        )


def _check_mask_dtype(cfg: Config, path: str) -> None:
    from mmseg.registry import MODELS

    from .datasets.collate import mask_transport_dtype
    from .models.data_preprocessors import BatchSegDataPreProcessor

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        collate = (cfg.get(loader) or {}).get('collate_fn') or {}
        kind = collate.get('type') if isinstance(collate, dict) else None
        # A registry name, scoped or not, or the function itself.
        name = config_type_name(kind)
        if name != 'stack_seg_collate' or collate.get('mask_dtype') is None:
            continue
        try:
            mask_transport_dtype(collate['mask_dtype'])
        except ValueError as err:
            raise ValueError(f'{path}: {loader}.collate_fn: {err}') from None
        where = 'model.data_preprocessor'
        pre = (cfg.get('model') or {}).get('data_preprocessor')
        if pre is None:
            where, pre = 'data_preprocessor', cfg.get('data_preprocessor')
        kind = pre.get('type') if isinstance(pre, dict) else None
        if isinstance(kind, str):
            kind = MODELS.get(config_type_name(kind))
        if not (
            isinstance(kind, type)
            and issubclass(kind, BatchSegDataPreProcessor)
        ):
            name = getattr(kind, '__name__', kind)
            raise ValueError(
                f'{path}: {loader}.collate_fn sends the masks as '
                f'{collate["mask_dtype"]!r} (mask_dtype), which only '
                'BatchSegDataPreProcessor puts back to their dtype, but '
                f'{where} is {name}: the losses would get '
                "narrowed labels. Use type='BatchSegDataPreProcessor' or "
                'drop mask_dtype'
            )


def _domain_dataset(dataloader: Optional[dict]):
    """(class, dataset cfg) of a dataloader's domain data set, or None."""
    if not dataloader:
        return None
    dataset = dataloader.get('dataset') or {}
    kind = dataset.get('type')
    if isinstance(kind, str):
        from mmseg.registry import DATASETS

        kind = DATASETS.get(config_type_name(kind))
    if not (isinstance(kind, type) and issubclass(kind, DomainSplitDataset)):
        return None
    return kind, dataset


def _domain_ids(kind, dataset: dict, key: str) -> list:
    names = kind.declared_facts(dataset.get('metainfo'))['domains']
    value = dataset.get(key)
    if value is None:
        return list(range(1, len(names) + 1)) if key == 'domains' else []
    return resolve_domains(value, names, key)


def _same_root(a: dict, b: dict) -> bool:
    root_a, root_b = a.get('data_root'), b.get('data_root')
    if root_a is None or root_b is None:
        return root_a == root_b
    return osp.realpath(str(root_a)) == osp.realpath(str(root_b))


def _check_held_out(cfg: Config, train, path: str) -> None:
    kind, train_set = train
    trained = set(_domain_ids(kind, train_set, 'domains'))
    names = kind.declared_facts(train_set.get('metainfo'))['domains']
    for loader in ('val_dataloader', 'test_dataloader'):
        found = _domain_dataset(cfg.get(loader))
        if found is None or found[0] is not kind:
            continue
        dataset = found[1]
        if not _same_root(train_set, dataset):
            continue
        leaked = sorted(
            trained & set(_domain_ids(kind, dataset, 'unseen_domains'))
        )
        if leaked:
            listed = ', '.join(f'{i} ({names[i - 1]})' for i in leaked)
            raise ValueError(
                f'{path}: {loader}.dataset.unseen_domains holds domain(s) '
                f'{listed} that train_dataloader.dataset.domains also '
                'trains on (same data_root): their results would be '
                'reported as unseen. Leave the held-out domain out of the '
                "training domains (and out of the sampler's domain_counts)"
            )


def _check_num_classes(cfg: Config, train, path: str) -> None:
    kind, train_set = train
    head = (cfg.get('model') or {}).get('decode_head')
    if not isinstance(head, dict) or head.get('num_classes') is None:
        return
    classes = kind.declared_facts(train_set.get('metainfo'))['classes']
    label_sets = cfg.model.get('label_sets')
    if label_sets is not None:
        # Two-sigmoid form: one channel per label set, labels from the data.
        unknown = sorted(
            {int(v) for s in label_sets for v in s} - set(range(len(classes)))
        )
        if unknown:
            raise ValueError(
                f'{path}: model.label_sets name labels {unknown}, but the '
                f'training set ({kind.__name__}) has {len(classes)} classes '
                f'{tuple(classes)} (labels 0..{len(classes) - 1})'
            )
        return
    if int(head['num_classes']) != len(classes):
        raise ValueError(
            f'{path}: model.decode_head.num_classes is '
            f'{head["num_classes"]}, but the training set '
            f'({kind.__name__}) has {len(classes)} classes '
            f'{tuple(classes)}: set num_classes={len(classes)} (or the '
            "data set's metainfo classes)"
        )
