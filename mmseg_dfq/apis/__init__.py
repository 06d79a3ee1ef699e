from .inference import (
    FUNDUS_GREY,
    SegInferencer,
    find_inputs,
    fundus_overlay,
)

__all__ = ['FUNDUS_GREY', 'SegInferencer', 'find_inputs', 'fundus_overlay']
