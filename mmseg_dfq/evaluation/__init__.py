"""Medical segmentation metrics: per-domain Dice / ASD / HD95.

- ``surface``: Dice and surface distances of binary masks (medpy's
  definitions, faster).
- ``postprocess``: the largest-component / hole-filling step shared by the
  metric and the inferencer.
- ``cases``: samples to cases (meta keys, label maps, 3D volumes from
  slices).
- ``report``: per-domain means, the log table and the per-case CSV.
- ``domain_metric``: ``DomainMetric``, the registered metric.
"""

from .domain_metric import DomainMetric
from .postprocess import (
    PostProcess,
    fill_holes,
    largest_connected_component,
    post_process_from_meta,
    postprocess_connectivity,
)
from .surface import (
    asd,
    assd,
    dice,
    hd95,
    surface_distances,
    surface_metrics,
)

__all__ = [
    'DomainMetric',
    'PostProcess',
    'asd',
    'assd',
    'dice',
    'fill_holes',
    'hd95',
    'largest_connected_component',
    'post_process_from_meta',
    'postprocess_connectivity',
    'surface_distances',
    'surface_metrics',
]
