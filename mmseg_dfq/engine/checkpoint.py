"""Checkpoints: the one ``--resume`` continues from, and whether one fits.

mmengine loads a ``load_from`` checkpoint non-strictly: weights of another
model (another class count, head or backbone) only log a warning, and the
model is tested or used with whatever did not load left at its
initialisation. :func:`check_checkpoint_fits` refuses such a checkpoint
with one clear error; ``tools/test.py`` applies it through
:class:`CheckpointFitHook`, the inference API through
:func:`load_checked_checkpoint`.
"""

import glob
import logging
import os
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import load_state_dict
from mmseg.registry import HOOKS

from ..compat import CheckpointError, load_checkpoint_file
from ..datasets.base import name_list

# How many keys of each kind a mismatch error lists.
SHOWN_KEYS = 5


def _candidates(work_dir: str) -> List[str]:
    """Checkpoints of ``work_dir``, the most recent first.

    The one named by ``last_checkpoint`` comes first when it exists; the
    others follow by modification time. ``best_*.pth`` files (a model
    picked on validation) are not training states to continue from.
    """
    found = [
        p
        for p in glob.glob(osp.join(work_dir, '*.pth'))
        if not osp.basename(p).startswith('best_')
    ]
    found.sort(key=osp.getmtime, reverse=True)
    named = None
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(last):
        with open(last) as f:
            named = f.read().strip()
    if named and osp.isfile(named):
        found = [named] + [
            p for p in found if osp.abspath(p) != osp.abspath(named)
        ]
    return found


def find_resumable_checkpoint(
    work_dir: str,
) -> Tuple[Optional[str], List[str]]:
    """The newest checkpoint of ``work_dir`` that loads.

    mmengine's auto-resume takes the file that ``last_checkpoint`` names
    and fails with a traceback when it is unreadable. This walks the
    checkpoints from the newest back and returns the first one that
    ``torch.load`` reads, warning about each unreadable one on the way.

    Args:
        work_dir (str): The run's work folder.

    Returns:
        tuple[str | None, list[str]]: The checkpoint to resume from (None
        when there is none) and the unreadable ones that were passed over.
    """
    if not osp.isdir(work_dir):
        return None, []
    broken = []
    for path in _candidates(work_dir):
        try:
            load_checkpoint_file(path, map_location='cpu')
        except (CheckpointError, RuntimeError) as err:
            print_log(
                f'Not resuming from {path}: {err}. Trying the previous '
                'checkpoint.',
                logger='current',
                level=logging.WARNING,
            )
            broken.append(path)
            continue
        return path, broken
    return None, broken


def remove_stale_temp_files(work_dir: str) -> List[str]:
    """Delete temporary files of checkpoint writes that were cut short.

    :func:`mmseg_dfq.compat.atomic_write` names them
    ``.<name>.tmp-<pid>``; one whose process no longer runs is left over
    from a killed run (the checkpoint it was writing never got its name).

    Args:
        work_dir (str): The run's work folder.

    Returns:
        list[str]: The files removed.
    """
    removed = []
    for path in glob.glob(osp.join(work_dir, '.*.tmp-*')):
        try:
            pid = int(path.rsplit('.tmp-', 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os.remove(path)
            removed.append(path)
        except PermissionError:  # a live process of another user
            continue
    return removed


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose weights do not fit the model; the message names
    the file and the keys that differ."""


def bare_model(model):
    """The model inside its DDP and test-time-augmentation wrappers.

    The one a checkpoint's state dict belongs to, as mmengine's
    ``load_state_dict`` unwraps it.

    Args:
        model (nn.Module): A model, wrapped or not.

    Returns:
        nn.Module: The innermost ``module``.
    """
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def checkpoint_weights(checkpoint, filename: str) -> OrderedDict:
    """The model weights of a loaded checkpoint, keyed as mmengine loads
    them.

    Its ``state_dict`` (mmengine's layout, with ``meta`` beside it), or
    the checkpoint itself when it has none (a bare state dict); a
    ``module.`` prefix (a model saved inside DDP) is dropped, as the
    Runner's ``load_checkpoint`` does.

    Args:
        checkpoint (dict): What ``torch.load`` returned.
        filename (str): The checkpoint file, for the error message.

    Returns:
        OrderedDict: The weights (``_metadata`` kept).

    Raises:
        CheckpointMismatchError: If the checkpoint holds no dict of
            weights.
    """
    state_dict = checkpoint
    if isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(
            f'checkpoint {filename!r} holds a {type(state_dict).__name__}, '
            'not a state dict of model weights (or a dict with one under '
            "'state_dict')"
        )
    metadata = getattr(state_dict, '_metadata', OrderedDict())
    weights = OrderedDict(
        (re.sub(r'^module\.', '', k), v) for k, v in state_dict.items()
    )
    weights._metadata = metadata
    return weights


def _shape(value) -> Optional[tuple]:
    shape = getattr(value, 'shape', None)
    return None if shape is None else tuple(shape)


def compare_weights(model, weights: Mapping) -> Tuple[list, list, list]:
    """How a state dict differs from the one a model loads strictly.

    The model's ``state_dict()`` is the reference: parameters and
    persistent buffers (non-persistent ones are neither saved nor
    expected). A missing ``num_batches_tracked`` of a BatchNorm is not
    counted (mmengine ignores it too; BN without a momentum is the only
    user). A parameter of shape () takes a checkpoint tensor of shape (1,)
    as ``torch.nn.Module.load_state_dict`` does.

    Args:
        model (nn.Module): The model, wrapped or not.
        weights (Mapping): The checkpoint's weights
            (:func:`checkpoint_weights`).

    Returns:
        tuple[list, list, list]: Missing keys, unexpected keys, and
        ``(key, checkpoint shape, model shape)`` of the keys whose shapes
        differ, each in state-dict order.
    """
    expected = bare_model(model).state_dict()
    missing = [
        k
        for k in expected
        if k not in weights and 'num_batches_tracked' not in k
    ]
    unexpected = [k for k in weights if k not in expected]
    shapes = []
    for key, value in expected.items():
        if key not in weights:
            continue
        want, got = _shape(value), _shape(weights[key])
        if want is None or got is None or want == got:
            continue
        if want == () and got == (1,):
            continue
        shapes.append((key, got, want))
    return missing, unexpected, shapes


def _listed(items: list) -> str:
    return name_list([str(i) for i in items], SHOWN_KEYS)


def _mismatch_hint(checkpoint, weights, unexpected, shapes) -> str:
    """What most likely went wrong, for the end of the error."""
    if isinstance(checkpoint, Mapping) and (
        'encoder_state_dict' in checkpoint
        or 'seg_decoder_state_dict' in checkpoint
    ):
        return (
            "It is a checkpoint of the DFQ authors' code: convert it with "
            'tools/convert/dfq_official_to_mmseg.py first.'
        )
    if len(unexpected) == len(weights):
        return (
            'It shares no weight name with the model: pretrained weights '
            "of a backbone alone, or another code base's checkpoint? Use a "
            'checkpoint that training with this config wrote.'
        )
    classes = [
        (got[0], want[0])
        for key, got, want in shapes
        if key.endswith('conv_seg.weight')
    ]
    if classes:
        got, want = classes[0]
        return (
            f"Its classifier has {got} outputs where the model's has {want} "
            '(another data set or number of classes?): use the config the '
            'checkpoint was trained with.'
        )
    return (
        'Was it trained with another config (another backbone, head or '
        'number of classes)? Use the config it was trained with.'
    )


def check_checkpoint_fits(
    model, checkpoint, filename: str, config: Optional[str] = None
) -> OrderedDict:
    """Refuse a checkpoint whose weights do not fit the model exactly.

    Every weight the model has must be in the checkpoint with its shape,
    and the checkpoint must hold no other (see :func:`compare_weights`):
    mmengine would load such a checkpoint with a warning only, leaving the
    rest of the model at its initialisation.

    Args:
        model (nn.Module): The model, wrapped (DDP, TTA) or not.
        checkpoint (dict): The loaded checkpoint.
        filename (str): Its file, named in the error.
        config (str, optional): The model's config file, named in the
            error. Default: None.

    Returns:
        OrderedDict: The checkpoint's weights (:func:`checkpoint_weights`).

    Raises:
        CheckpointMismatchError: One line naming the file and the first
            :data:`SHOWN_KEYS` missing keys, unexpected keys and shape
            mismatches, with a hint.
    """
    weights = checkpoint_weights(checkpoint, filename)
    missing, unexpected, shapes = compare_weights(model, weights)
    if not (missing or unexpected or shapes):
        return weights
    parts = []
    if missing:
        parts.append(
            f'{len(missing)} weight(s) of the model missing from it '
            f'({_listed(missing)})'
        )
    if unexpected:
        parts.append(
            f'{len(unexpected)} weight(s) the model does not have '
            f'({_listed(unexpected)})'
        )
    if shapes:
        listed = _listed(
            [f'{k} {list(got)} vs. {list(want)}' for k, got, want in shapes]
        )
        parts.append(
            f'{len(shapes)} weight(s) of another shape, checkpoint vs. '
            f'model ({listed})'
        )
    of = f' of {config}' if config else ''
    raise CheckpointMismatchError(
        f'checkpoint {filename!r} does not fit the model{of}: '
        + '; '.join(parts)
        + '. '
        + _mismatch_hint(checkpoint, weights, unexpected, shapes)
    )


def load_checked_checkpoint(
    model,
    filename: str,
    map_location='cpu',
    config: Optional[str] = None,
) -> dict:
    """Load a local checkpoint into a model, refusing one that does not fit.

    The file is read once: checked with :func:`check_checkpoint_fits`,
    then loaded strictly by mmengine's ``load_state_dict``.

    Args:
        model (nn.Module): The model, changed in place.
        filename (str): A local checkpoint file.
        map_location (str | callable): As for ``torch.load``.
            Default: 'cpu'.
        config (str, optional): The model's config file, named in errors.

    Returns:
        dict: The loaded checkpoint (its ``meta``, for instance).

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointError: If it cannot be read (see
            :func:`mmseg_dfq.compat.load_checkpoint_file`), or, as
            :class:`CheckpointMismatchError`, if it does not fit.
    """
    checkpoint = load_checkpoint_file(filename, map_location=map_location)
    weights = check_checkpoint_fits(model, checkpoint, filename, config)
    load_state_dict(bare_model(model), weights, strict=True)
    return checkpoint


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint that the Runner loads into another model.

    mmengine's Runner loads ``load_from`` non-strictly. This hook checks
    the checkpoint in ``after_load_checkpoint``, after the file is read and
    before any weight is copied, with :func:`check_checkpoint_fits`; the
    file is read once. Its priority is ``HIGHEST``, so it sees the
    checkpoint before other hooks (``EMAHook``) use it.

    Args:
        filename (str, optional): The checkpoint, for the error message.
            Default: None (the Runner's ``load_from``).
        config (str, optional): The config file, for the error message.
            Default: None.
    """

    priority = 'HIGHEST'

    def __init__(
        self, filename: Optional[str] = None, config: Optional[str] = None
    ):
        self.filename = filename
        self.config = config

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Raise :class:`CheckpointMismatchError` unless it fits.

        Args:
            runner (Runner): The runner; its ``model`` is checked.
            checkpoint (dict): The checkpoint it loaded.
        """
        filename = self.filename or getattr(runner, '_load_from', None)
        check_checkpoint_fits(
            runner.model, checkpoint, str(filename), self.config
        )
