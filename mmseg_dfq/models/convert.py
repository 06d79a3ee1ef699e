"""Convert the DFQ authors' checkpoints (BiQiWHU/DFQ) to this plugin's keys.

The authors' ``train_feed.py`` saves a dict with ``encoder_state_dict``
(their SegFormer MiT: ``patch_embed{i}``, ``block{i}``, ``norm{i}`` keys)
and ``seg_decoder_state_dict`` (their ``FeedFormerHead``). The encoder keys
are those of the official SegFormer release, which mmseg's own
``tools/model_converters/mit2mmseg.py`` converts; it is loaded from the
installed mmseg package rather than rewritten. The head keys map one to one
onto :class:`~mmseg_dfq.models.decode_heads.DFQHead`.
"""

import importlib.util
import os.path as osp
import re
from collections import OrderedDict
from typing import Callable, Dict, Mapping

import torch

# Inside one ``attn_c{i}_c1`` block of the authors' head -> FeatureQueryBlock.
_BLOCK_KEYS = (
    ('norm1.', 'q_norm.'),
    ('norm2.', 'shallow_norm.'),
    ('norm3.', 'ffn_norm.'),
    ('attn.q.', 'q.'),
    ('attn.kv.', 'kv.'),
    ('attn.proj.', 'proj.'),
    ('attn.sr.', 'kv_conv.'),
    ('attn.norm.', 'kv_norm.'),
    ('mlp.fc1.', 'ffn.fc1.'),
    ('mlp.dwconv.dwconv.', 'ffn.dwconv.'),
    ('mlp.fc2.', 'ffn.fc2.'),
)
_HEAD_KEYS = (
    ('linear_fuse.conv.', 'fusion_conv.conv.'),
    ('linear_fuse.bn.', 'fusion_conv.bn.'),
    ('linear_pred.', 'conv_seg.'),
)
_BLOCK_RE = re.compile(r'^attn_c(\d+)_c1\.(.*)$')


def strip_prefix(
    state_dict: Mapping[str, torch.Tensor], prefix: str = 'module.'
) -> Dict[str, torch.Tensor]:
    """Drop ``prefix`` (DataParallel's ``module.``) from every key that has it.

    Args:
        state_dict (Mapping[str, Tensor]): A state dict.
        prefix (str): Prefix to remove. Default: 'module.'.

    Returns:
        dict[str, Tensor]: The same tensors under the stripped keys.
    """
    return OrderedDict(
        (k[len(prefix) :] if k.startswith(prefix) else k, v)
        for k, v in state_dict.items()
    )


def convert_authors_head(
    state_dict: Mapping[str, torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """Map the authors' ``FeedFormerHead`` keys onto ``DFQHead`` keys.

    ``attn_c{2,3,4}_c1`` become ``blocks.{0,1,2}`` (deep level i queries c1
    in block i - 2); inside a block see ``_BLOCK_KEYS``; ``linear_fuse`` is
    ``fusion_conv`` and ``linear_pred`` is ``conv_seg``.

    Args:
        state_dict (Mapping[str, Tensor]): The authors' decoder state dict
            (a leading ``module.`` is removed).

    Returns:
        dict[str, Tensor]: DFQHead state dict (no ``decode_head.`` prefix).

    Raises:
        KeyError: For a key that has no counterpart, naming it.
    """
    out = OrderedDict()
    for key, value in strip_prefix(state_dict).items():
        match = _BLOCK_RE.match(key)
        if match:
            level, rest = int(match.group(1)), match.group(2)
            table, prefix = _BLOCK_KEYS, f'blocks.{level - 2}.'
            if level < 2:
                raise KeyError(f'authors head key {key!r}: no level c{level}')
        else:
            rest, table, prefix = key, _HEAD_KEYS, ''
        for theirs, ours in table:
            if rest.startswith(theirs):
                out[prefix + ours + rest[len(theirs) :]] = value
                break
        else:
            raise KeyError(
                f'authors head key {key!r} has no DFQHead counterpart'
            )
    return out


def load_mit_converter() -> Callable:
    """Return ``convert_mit`` from mmseg's packaged ``mit2mmseg.py``.

    Returns:
        Callable: mmseg's converter of official SegFormer MiT keys.

    Raises:
        FileNotFoundError: If the installed mmseg ships no such tool.
    """
    import mmseg

    path = osp.join(
        osp.dirname(mmseg.__file__),
        '.mim',
        'tools',
        'model_converters',
        'mit2mmseg.py',
    )
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'mmseg converter {path} not found; mmseg-dfq reuses mmseg '
            "1.x's tools/model_converters/mit2mmseg.py"
        )
    spec = importlib.util.spec_from_file_location('_mmseg_mit2mmseg', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert_mit


def convert_authors_checkpoint(
    checkpoint: Mapping[str, Mapping[str, torch.Tensor]],
) -> Dict[str, torch.Tensor]:
    """Convert an authors' ``train_feed.py`` checkpoint to an mmseg model.

    Args:
        checkpoint (Mapping): With ``encoder_state_dict`` and
            ``seg_decoder_state_dict``.

    Returns:
        dict[str, Tensor]: ``backbone.*`` and ``decode_head.*`` keys of an
        ``EncoderDecoder`` with ``RDWTMixVisionTransformer`` + ``DFQHead``.

    Raises:
        KeyError: If either part is missing.
    """
    missing = [
        k
        for k in ('encoder_state_dict', 'seg_decoder_state_dict')
        if k not in checkpoint
    ]
    if missing:
        raise KeyError(
            f'not an authors DFQ checkpoint: missing {missing} (found '
            f'{sorted(checkpoint)[:8]})'
        )
    encoder = strip_prefix(checkpoint['encoder_state_dict'])
    convert_mit = load_mit_converter()
    out = OrderedDict()
    for key, value in convert_mit(encoder).items():
        out['backbone.' + key] = value
    for key, value in convert_authors_head(
        checkpoint['seg_decoder_state_dict']
    ).items():
        out['decode_head.' + key] = value
    return out
