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
from .data_cache import MemoryCache  # noqa: E402
from .overlay import OverlayWriter, paint_overlay, paint_pair  # noqa: E402

__all__ += ['MemoryCache', 'OverlayWriter', 'paint_overlay', 'paint_pair']
