from .batch import BatchSegDataPreProcessor
from .ram import (
    RAMSegDataPreProcessor,
    low_freq_amplitude_mix,
    low_freq_window,
)

__all__ = [
    'BatchSegDataPreProcessor',
    'RAMSegDataPreProcessor',
    'low_freq_amplitude_mix',
    'low_freq_window',
]
