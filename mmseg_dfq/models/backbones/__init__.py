from .mit_rdwt import RDWTMixVisionTransformer

__all__ = ['RDWTMixVisionTransformer']
