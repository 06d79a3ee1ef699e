from .rdwt_neck import RDWTNeck

__all__ = ['RDWTNeck']
