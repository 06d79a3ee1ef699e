from . import (  # noqa: F401
    backbones,
    decode_heads,
    losses,
    necks,
    segmentors,
    utils,
)
