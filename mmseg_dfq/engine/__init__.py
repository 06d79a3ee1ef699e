from .visualization_hook import DomainVisualizationHook

__all__ = ['DomainVisualizationHook']
