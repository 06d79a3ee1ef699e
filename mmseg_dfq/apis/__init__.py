from .features import (
    build_analysis_dataset,
    domain_features,
    mean_abs_covariance,
    off_diagonal_mean,
)
from .inference import (
    FUNDUS_GREY,
    SegInferencer,
    find_inputs,
    fundus_overlay,
)

__all__ = [
    'FUNDUS_GREY',
    'SegInferencer',
    'build_analysis_dataset',
    'domain_features',
    'find_inputs',
    'fundus_overlay',
    'mean_abs_covariance',
    'off_diagonal_mean',
]
