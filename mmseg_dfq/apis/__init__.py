"""Inference on new data and feature extraction for the analysis tools."""

from .features import (
    build_analysis_dataset,
    domain_features,
    mean_abs_covariance,
    off_diagonal_mean,
)
from .inference import (
    FUNDUS_GREY,
    SegInferencer,
    file_stem,
    find_inputs,
    fundus_overlay,
    init_segmentor,
    input_kind,
    nifti_slices,
    save_label_volume,
    volume_slice_overlay,
)

__all__ = [
    'FUNDUS_GREY',
    'SegInferencer',
    'build_analysis_dataset',
    'domain_features',
    'file_stem',
    'find_inputs',
    'fundus_overlay',
    'init_segmentor',
    'input_kind',
    'mean_abs_covariance',
    'nifti_slices',
    'off_diagonal_mean',
    'save_label_volume',
    'volume_slice_overlay',
]
