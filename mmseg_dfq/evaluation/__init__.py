"""Medical segmentation metrics: per-domain Dice / ASD / HD95."""

from .domain_metric import DomainMetric
from .surface import (
    asd,
    assd,
    dice,
    fill_holes,
    hd95,
    largest_connected_component,
    surface_distances,
    surface_metrics,
)

__all__ = [
    'DomainMetric',
    'asd',
    'assd',
    'dice',
    'fill_holes',
    'hd95',
    'largest_connected_component',
    'surface_distances',
    'surface_metrics',
]
