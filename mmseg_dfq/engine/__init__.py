from .visualization_hook import DomainVisualizationHook

__all__ = ['DomainVisualizationHook']
from .fast_path import (  # noqa: E402
    BF16OptimWrapper,
    ChannelsLastDistributedDataParallel,
    FastPathHook,
    compile_forward,
    set_tf32,
    to_channels_last,
)

__all__ += [
    'BF16OptimWrapper',
    'ChannelsLastDistributedDataParallel',
    'FastPathHook',
    'compile_forward',
    'set_tf32',
    'to_channels_last',
]
