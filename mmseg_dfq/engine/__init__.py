from .batch_stats_hook import BatchStatsBNHook
from .checkpoint import find_resumable_checkpoint, remove_stale_temp_files
from .data_cache import MemoryCache
from .fast_path import (
    BF16OptimWrapper,
    ChannelsLastDistributedDataParallel,
    FastPathHook,
    compile_forward,
    set_tf32,
    to_channels_last,
)
from .lr_schedule import LaggedPolyLR
from .nonfinite_hook import NonFiniteLossError, NonFiniteLossHook
from .overlay import OverlayWriter, paint_overlay, paint_pair
from .preemption_hook import PREEMPTED_EXIT_CODE, PreemptionHook
from .resume_hook import ExactResumeHook
from .tolerant_test_loop import TolerantTestLoop
from .visualization_hook import DomainVisualizationHook

__all__ = [
    'BatchStatsBNHook',
    'BF16OptimWrapper',
    'ChannelsLastDistributedDataParallel',
    'DomainVisualizationHook',
    'ExactResumeHook',
    'FastPathHook',
    'LaggedPolyLR',
    'MemoryCache',
    'NonFiniteLossError',
    'NonFiniteLossHook',
    'OverlayWriter',
    'PREEMPTED_EXIT_CODE',
    'PreemptionHook',
    'TolerantTestLoop',
    'compile_forward',
    'find_resumable_checkpoint',
    'paint_overlay',
    'paint_pair',
    'remove_stale_temp_files',
    'set_tf32',
    'to_channels_last',
]
