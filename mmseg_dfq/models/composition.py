"""Build-time check that DFQ's RDWT parts come in complete compositions.

RDWT has a producer and a consumer: instance-normalised (whitened) features
come from :class:`RDWTMixVisionTransformer` (the stages in ``rdwt_stages``)
or :class:`RDWTNeck`, and the decorrelation loss that trains them from
``DFQHead(loss_rdwt=...)``. Each half alone builds and trains without a
word, but is not DFQ:

- whitened features with no RDWT loss (e.g. ``RDWTMixVisionTransformer``
  under mmseg's ``SegformerHead``, or ``RDWTNeck`` before a DFQHead without
  ``loss_rdwt``) train without the decorrelation loss;
- ``DFQHead(loss_rdwt=...)`` on features nothing whitened (a plain MiT, or
  a neck such as FPN between the RDWT backbone and the head) computes the
  loss on statistics that are not the RDWT ones.

Every DFQ part calls :func:`check_rdwt_composition` at the end of its
``__init__``. mmseg's segmentors build backbone, neck and heads inside their
own ``__init__`` from config dicts, so the check finds that segmentor frame
on the call stack and reads the three configs there: it sees the whole
composition while the first DFQ part is built, whichever part that is. It
warns once per segmentor (:class:`RDWTCompositionWarning`, naming the key
to set) and does nothing for a part built on its own. A producer and a
loss whose RDWT layouts differ (``rdwt_layout`` on the backbone / neck,
``RDWTLoss(layout=...)``) raise a ``ValueError`` naming both keys. So
does ``RDWTLoss(normalize=False)`` (the covariance of the maps as they come,
the authors' computation on their encoder's normalised maps) unless the
producer right before the head normalised every level the loss sees.
"""

import inspect
import sys
import warnings
import weakref
from typing import Optional

from mmseg.registry import MODELS

__all__ = ['RDWTCompositionWarning', 'check_rdwt_composition']

# How far up the stack to look for the segmentor's __init__: the part's
# __init__, build_from_cfg, Registry.build and mmseg's _init_decode_head sit
# in between.
_MAX_DEPTH = 16
_checked: 'weakref.WeakSet' = weakref.WeakSet()


class RDWTCompositionWarning(UserWarning):
    """An RDWT producer without the RDWT loss, or the loss without one."""


def _segmentor_frame(start):
    """Locals of the innermost segmentor ``__init__`` building this part.

    Returns:
        tuple[object, dict] | tuple[None, None]: The segmentor and the
        locals of its ``__init__`` (with the ``backbone`` and
        ``decode_head`` configs).
    """
    from mmseg.models.segmentors.base import BaseSegmentor

    frame = start
    for _ in range(_MAX_DEPTH):
        if frame is None:
            break
        local = frame.f_locals
        owner = local.get('self')
        if (
            isinstance(owner, BaseSegmentor)
            and 'backbone' in local
            and 'decode_head' in local
        ):
            return owner, local
        frame = frame.f_back
    return None, None


def _cls(cfg) -> Optional[type]:
    """The class a model config dict builds, or None if unknown."""
    if not isinstance(cfg, dict):
        return None
    kind = cfg.get('type')
    if inspect.isclass(kind):
        return kind
    if isinstance(kind, str):
        return MODELS.get(kind)
    return None


def _name(cfg) -> str:
    cls = _cls(cfg)
    return cls.__name__ if cls is not None else str(cfg.get('type'))


def _default(cls, arg):
    """Default of ``arg`` in the first ``__init__`` of ``cls``'s MRO naming it.

    Subclasses that pass ``**kwargs`` on (``RDWTMixVisionTransformer`` to
    MiT's ``out_indices``) keep their parent's default.
    """
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters
        if arg in params:
            return params[arg].default
    raise KeyError(f'{cls.__name__}.__init__ has no argument {arg!r}')


def _rdwt_backbone(cfg) -> bool:
    """Whether a backbone config whitens at least one stage."""
    from .backbones.mit_rdwt import RDWTMixVisionTransformer

    cls = _cls(cfg)
    if cls is None or not issubclass(cls, RDWTMixVisionTransformer):
        return False
    stages = cfg.get('rdwt_stages', _default(cls, 'rdwt_stages'))
    return len(tuple(stages)) > 0


def _rdwt_neck(cfg) -> bool:
    """Whether a neck config (or the last of a list of necks) whitens."""
    from .necks.rdwt_neck import RDWTNeck

    if isinstance(cfg, (list, tuple)):
        cfg = cfg[-1] if cfg else None
    cls = _cls(cfg)
    if cls is None or not issubclass(cls, RDWTNeck):
        return False
    index = cfg.get('in_index', _default(cls, 'in_index'))
    return index is None or len(tuple(index)) > 0


def _rdwt_loss_heads(cfg) -> list:
    """The decode-head configs (one, or a cascade) with an RDWT loss."""
    from .decode_heads.dfq_head import DFQHead

    heads = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    found = []
    for head in heads:
        cls = _cls(head)
        if (
            cls is not None
            and issubclass(cls, DFQHead)
            and head.get('loss_rdwt') is not None
        ):
            found.append(head)
    return found


def _problem(backbone, neck, decode_head) -> Optional[str]:
    """Describe a half composition, or return None for a complete one."""
    has_neck = neck is not None and neck != []
    from_backbone = _rdwt_backbone(backbone)
    from_neck = _rdwt_neck(neck) if has_neck else False
    # What the head receives is whitened if the last stage before it is.
    whitened_at_head = from_neck or (from_backbone and not has_neck)
    consumers = _rdwt_loss_heads(decode_head)
    head = ', '.join(sorted({_name(h) for h in consumers})) or _name(
        decode_head if isinstance(decode_head, dict) else decode_head[-1]
    )
    rdwt_loss = "dict(type='RDWTLoss', loss_weight=1e-4)"
    head_cls = _cls(decode_head)
    from .decode_heads.dfq_head import DFQHead

    if head_cls is not None and issubclass(head_cls, DFQHead):
        loss_key = f'model.decode_head.loss_rdwt={rdwt_loss}'
    else:
        loss_key = (
            "model.decode_head=dict(type='DFQHead', ..., "
            f'loss_rdwt={rdwt_loss})'
        )
    if (from_backbone or from_neck) and not consumers:
        producers, off = [], []
        if from_backbone:
            producers.append(f'backbone {_name(backbone)}')
            off.append('model.backbone.rdwt_stages=()')
        if from_neck:
            producers.append(f'neck {_name(neck)}')
            off.append('model.neck=None (or a neck of your choice)')
        return (
            f'the {" and ".join(producers)} produces RDWT '
            '(instance-normalised) features, but the decode head '
            f'{head} computes no RDWT loss, so the decorrelation loss is '
            f'not trained. For DFQ set {loss_key}; for plain features set '
            f'{" and ".join(off)}.'
        )
    if consumers and not whitened_at_head:
        if from_backbone and has_neck:
            where = (
                f'the neck {_name(neck)} sits between the RDWT backbone and '
                'the head, so the loss sees its un-whitened outputs'
            )
            fix = "set model.neck=dict(type='RDWTNeck') (or drop the neck)"
        else:
            where = (
                f'nothing before it whitens the features (backbone '
                f'{_name(backbone)}'
                + (f', neck {_name(neck)}' if has_neck else ', no neck')
                + ')'
            )
            fix = (
                "set model.backbone.type='RDWTMixVisionTransformer' (MiT "
                "backbones) or model.neck=dict(type='RDWTNeck') (any "
                'backbone)'
            )
        return (
            f'{head} has loss_rdwt, but {where}. For DFQ {fix}; without '
            'RDWT set model.decode_head.loss_rdwt=None.'
        )
    return None


def _cfg_layout(cfg, arg: str) -> str:
    """The RDWT layout a backbone / neck / loss config asks for."""
    cls = _cls(cfg)
    if cls is None:
        return 'channels'
    return cfg.get(arg, _default(cls, arg))


def _layout_mismatch(backbone, neck, decode_head) -> Optional[str]:
    """Describe an RDWT producer and loss that group values differently."""
    from .losses.rdwt_loss import RDWTLoss

    has_neck = neck is not None and neck != []
    if has_neck and _rdwt_neck(neck):
        last = neck[-1] if isinstance(neck, (list, tuple)) else neck
        produced, key = _cfg_layout(last, 'rdwt_layout'), 'model.neck'
    elif not has_neck and _rdwt_backbone(backbone):
        produced = _cfg_layout(backbone, 'rdwt_layout')
        key = 'model.backbone'
    else:
        return None
    for head in _rdwt_loss_heads(decode_head):
        loss = head['loss_rdwt']
        if _cls(loss) is None or not issubclass(_cls(loss), RDWTLoss):
            continue
        used = loss.get('layout', _default(RDWTLoss, 'layout'))
        if used != produced:
            return (
                f'{key}.rdwt_layout={produced!r} but '
                f'model.decode_head.loss_rdwt.layout={used!r}: the RDWT '
                'loss must decorrelate the groups that were normalised; '
                'set both to the same layout'
            )
    return None


def _level_count(backbone) -> Optional[int]:
    """How many maps a backbone config returns, or None if unknown.

    From its ``out_indices`` (the config's, else the class default): a
    sequence gives one map per entry; an int one map (mmseg's and
    mmpretrain's ViTs, mmpretrain's ConvNeXt).
    """
    cls = _cls(backbone)
    if cls is None:
        return None
    try:
        outs = backbone.get('out_indices', _default(cls, 'out_indices'))
    except KeyError:
        return None
    if isinstance(outs, int):
        return 1
    if isinstance(outs, (list, tuple)):
        return len(outs)
    return None


def _wrap(levels, n: Optional[int]) -> list:
    """Positions with negative ones wrapped, when the count ``n`` is known."""
    if n is None:
        return list(levels)
    return [i % n if -n <= i < n else i for i in levels]


def _raw_levels(head, n: Optional[int]):
    """The input positions the RDWT loss of ``head`` sees, or None.

    ``DFQHead.loss`` takes ``inputs[i] for i in rdwt_in_index`` of the maps
    the head receives (all of them for None), so these are positions in the
    backbone's (or last neck's) outputs. Negative positions are wrapped
    when ``n``, the number of maps, is known. None: unknown (all of an
    unknown number, or a negative position with ``n`` unknown).
    """
    from .decode_heads.dfq_head import DFQHead

    index = head.get('rdwt_in_index', _default(DFQHead, 'rdwt_in_index'))
    if index is None:
        return None if n is None else list(range(n))
    levels = _wrap([int(i) for i in index], n)
    return levels if n is not None or all(i >= 0 for i in levels) else None


_UNNORMALISED = (
    'model.decode_head.loss_rdwt.normalize=False takes the maps the RDWT '
    'loss sees as instance-normalised already, but '
)
_RAW_KEY = 'model.decode_head.loss_rdwt.normalize=True'
_NORMALISED_PRODUCER = (
    f'Set {_RAW_KEY}, or make the last stage before the head an RDWT '
    "producer (model.neck=dict(type='RDWTNeck'), or "
    "model.backbone.type='RDWTMixVisionTransformer' with no neck)."
)


def _rdwt_neck_gap(backbone, neck, head, seen_key) -> Optional[str]:
    """Levels the loss sees that the last neck, an ``RDWTNeck``, skips."""
    necks = list(neck) if isinstance(neck, (list, tuple)) else [neck]
    last = necks[-1]
    done = last.get('in_index', _default(_cls(last), 'in_index'))
    if done is None:
        return None
    neck_key = (
        'model.neck[-1].in_index'
        if isinstance(neck, (list, tuple))
        else 'model.neck.in_index'
    )
    n = _level_count(backbone) if len(necks) == 1 else None
    levels = _raw_levels(head, n)
    done = _wrap(done, n)
    if levels is None or any(i < 0 for i in done):
        return (
            f'{_UNNORMALISED}the configs do not tell which levels the neck '
            f'{_name(last)} ({neck_key}={tuple(done)}) and the loss '
            f'({seen_key}) mean. Set {neck_key}=None or list the levels in '
            f'both, or set {_RAW_KEY}.'
        )
    missing = sorted(set(levels) - set(done))
    if missing:
        return (
            f'{_UNNORMALISED}level(s) {missing} that it sees ({seen_key}) '
            f"are not in the RDWTNeck's {neck_key}={tuple(done)}. Set "
            f'{neck_key}=None (all levels) or to include them, or set '
            f'{_RAW_KEY}.'
        )
    return None


def _rdwt_stage_gap(backbone, head, seen_key) -> Optional[str]:
    """Stages the loss sees that an RDWT MiT (no neck) does not whiten."""
    cls = _cls(backbone)
    # MiT returns the selected stages in stage order, whatever the order
    # (or repeats) of out_indices.
    outs = tuple(
        sorted(set(backbone.get('out_indices', _default(cls, 'out_indices'))))
    )
    stages = tuple(backbone.get('rdwt_stages', _default(cls, 'rdwt_stages')))
    levels = _raw_levels(head, len(outs))
    bad = [i for i in levels if not 0 <= i < len(outs)]
    if bad:
        return (
            f'{_UNNORMALISED}{seen_key} names output(s) {bad} of a backbone '
            f'with {len(outs)} (model.backbone.out_indices={outs}).'
        )
    missing = sorted({outs[i] for i in levels} - set(stages))
    if missing:
        wanted = tuple(sorted(set(stages) | set(missing)))
        return (
            f'{_UNNORMALISED}backbone stage(s) {missing} (through '
            f'model.backbone.out_indices={outs} and {seen_key}) are not in '
            f'model.backbone.rdwt_stages={stages}. Set '
            f'model.backbone.rdwt_stages={wanted}, or '
            'model.decode_head.rdwt_in_index to the normalised stages '
            f'only, or {_RAW_KEY}.'
        )
    return None


def _unnormalised(backbone, neck, decode_head) -> Optional[str]:
    """Describe an ``RDWTLoss(normalize=False)`` on maps left unnormalised.

    ``normalize=False`` takes the covariance of the maps as they come, so
    every level the loss sees must be one the producer right before the
    head instance-normalised: with no neck, a backbone stage in
    ``rdwt_stages`` (positions map to stages through ``out_indices``); with
    an ``RDWTNeck`` last, a level in its ``in_index`` (None: all).
    """
    from .backbones.mit_rdwt import RDWTMixVisionTransformer
    from .losses.rdwt_loss import RDWTLoss
    from .necks.rdwt_neck import RDWTNeck

    has_neck = neck is not None and neck != []
    last = None
    if has_neck:
        last = neck[-1] if isinstance(neck, (list, tuple)) else neck
    neck_cls = _cls(last) if has_neck else None
    back_cls = _cls(backbone)
    for head in _rdwt_loss_heads(decode_head):
        loss = head['loss_rdwt']
        loss_cls = _cls(loss)
        if loss_cls is None or not issubclass(loss_cls, RDWTLoss):
            continue
        if loss.get('normalize', _default(loss_cls, 'normalize')):
            continue
        seen = head.get('rdwt_in_index')
        seen_key = (
            'model.decode_head.rdwt_in_index='
            f'{None if seen is None else tuple(seen)}'
        )
        if neck_cls is not None and issubclass(neck_cls, RDWTNeck):
            gap = _rdwt_neck_gap(backbone, neck, head, seen_key)
        elif (
            not has_neck
            and back_cls is not None
            and issubclass(back_cls, RDWTMixVisionTransformer)
        ):
            gap = _rdwt_stage_gap(backbone, head, seen_key)
        elif has_neck and _rdwt_backbone(backbone):
            gap = (
                f'{_UNNORMALISED}the neck {_name(last)} between the RDWT '
                'backbone and the head does not instance-normalise its '
                f'outputs. {_NORMALISED_PRODUCER}'
            )
        else:
            gap = (
                f'{_UNNORMALISED}nothing before the head normalises them '
                f'(backbone {_name(backbone)}'
                + (f', neck {_name(last)}' if has_neck else ', no neck')
                + f'). {_NORMALISED_PRODUCER}'
            )
        if gap is not None:
            return gap
    return None


def check_rdwt_composition(part) -> None:
    """Warn once if the segmentor building ``part`` is half DFQ.

    Called at the end of the ``__init__`` of every DFQ model part. Outside
    a segmentor (a part built on its own) it does nothing. An RDWT producer
    and an RDWT loss with different layouts (``'channels'`` /
    ``'authors'``), and an ``RDWTLoss(normalize=False)`` on levels the
    producer before the head did not normalise, are errors, not warnings.

    Args:
        part (nn.Module): The part being built (used for the message only).
    """
    segmentor, local = _segmentor_frame(sys._getframe(1))
    if segmentor is None or segmentor in _checked:
        return
    _checked.add(segmentor)
    mismatch = _layout_mismatch(
        local.get('backbone'), local.get('neck'), local.get('decode_head')
    )
    if mismatch is not None:
        raise ValueError(f'{type(segmentor).__name__}: {mismatch}')
    unnormalised = _unnormalised(
        local.get('backbone'), local.get('neck'), local.get('decode_head')
    )
    if unnormalised is not None:
        raise ValueError(f'{type(segmentor).__name__}: {unnormalised}')
    problem = _problem(
        local.get('backbone'), local.get('neck'), local.get('decode_head')
    )
    if problem is not None:
        warnings.warn(
            f'{type(segmentor).__name__} with {type(part).__name__}: '
            f'{problem}',
            RDWTCompositionWarning,
            stacklevel=2,
        )
