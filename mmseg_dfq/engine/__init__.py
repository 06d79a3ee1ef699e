from .checkpoint import find_resumable_checkpoint, remove_stale_temp_files
from .nonfinite_hook import NonFiniteLossError, NonFiniteLossHook
from .preemption_hook import PREEMPTED_EXIT_CODE, PreemptionHook
from .resume_hook import ExactResumeHook
from .tolerant_test_loop import TolerantTestLoop
from .visualization_hook import DomainVisualizationHook

__all__ = [
    'DomainVisualizationHook',
    'ExactResumeHook',
    'NonFiniteLossError',
    'NonFiniteLossHook',
    'PREEMPTED_EXIT_CODE',
    'PreemptionHook',
    'TolerantTestLoop',
    'find_resumable_checkpoint',
    'remove_stale_temp_files',
]
