from .ram import (
    RAMSegDataPreProcessor,
    low_freq_amplitude_mix,
    low_freq_window,
)

__all__ = [
    'RAMSegDataPreProcessor',
    'low_freq_amplitude_mix',
    'low_freq_window',
]
