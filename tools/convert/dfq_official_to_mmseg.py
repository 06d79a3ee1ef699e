"""Convert a DFQ authors' checkpoint (BiQiWHU/DFQ train_feed.py) to mmseg.

The source holds ``encoder_state_dict`` (their MiT) and
``seg_decoder_state_dict`` (their FeedFormerHead). The result is an mmseg
checkpoint (``{'state_dict': ..., 'meta': ...}``) for an ``EncoderDecoder``
with ``RDWTMixVisionTransformer`` + ``DFQHead``, e.g.
``configs/dfq/dfq_mit-b3_fundus_d1_authors.py`` (their MiT-b3, two sigmoid
channels). Encoder keys go through mmseg's own ``mit2mmseg.py``.

Example::

    python tools/convert/dfq_official_to_mmseg.py their.pth ours.pth
    python tools/test.py configs/dfq/dfq_mit-b3_fundus_d1_authors.py ours.pth
"""

import argparse
import os
import os.path as osp

import torch

from mmseg_dfq.models.convert import convert_authors_checkpoint


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help="the authors' checkpoint (.pth)")
    parser.add_argument('dst', help='path of the mmseg checkpoint to write')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        raise SystemExit(f'error: checkpoint {args.src} does not exist')
    try:
        # Their checkpoints are plain tensors in dicts: weights_only holds.
        checkpoint = torch.load(
            args.src, map_location='cpu', weights_only=True
        )
    except Exception as err:  # noqa: BLE001 - reported with the file name
        raise SystemExit(
            f'error: cannot read {args.src} as a weights-only torch '
            f'checkpoint: {err}'
        ) from None
    try:
        state_dict = convert_authors_checkpoint(checkpoint)
    except KeyError as err:
        raise SystemExit(f'error: {args.src}: {err.args[0]}') from None
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    torch.save(
        dict(state_dict=state_dict, meta=dict(converted_from=args.src)),
        args.dst,
    )
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
