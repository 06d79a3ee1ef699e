from . import backbones, decode_heads, losses, necks, utils  # noqa: F401
