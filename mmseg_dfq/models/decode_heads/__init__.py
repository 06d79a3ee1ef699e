from .dfq_head import DFQHead, FeatureQueryBlock

__all__ = ['DFQHead', 'FeatureQueryBlock']
