"""Inference on new data and feature extraction for the analysis tools."""

from ..datasets.fundus_codec import FUNDUS_GREY
from ..datasets.nifti import file_stem, save_label_volume
from .features import (
    build_analysis_dataset,
    domain_features,
    mean_abs_covariance,
    off_diagonal_mean,
)
from .inference import (
    SegInferencer,
    dataset_facts_of,
    init_segmentor,
    postprocess_settings,
)
from .inputs import find_inputs, input_kind, nifti_slices
from .overlay import fundus_overlay, volume_slice_overlay

__all__ = [
    'FUNDUS_GREY',
    'SegInferencer',
    'build_analysis_dataset',
    'dataset_facts_of',
    'domain_features',
    'file_stem',
    'find_inputs',
    'fundus_overlay',
    'init_segmentor',
    'input_kind',
    'mean_abs_covariance',
    'nifti_slices',
    'off_diagonal_mean',
    'postprocess_settings',
    'save_label_volume',
    'volume_slice_overlay',
]
