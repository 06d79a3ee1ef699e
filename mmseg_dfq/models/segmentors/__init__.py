from .multilabel import MultiLabelEncoderDecoder, MultiLabelTTAModel
from .ram_encoder_decoder import RAMEncoderDecoder, symmetric_kl

__all__ = [
    'MultiLabelEncoderDecoder',
    'MultiLabelTTAModel',
    'RAMEncoderDecoder',
    'symmetric_kl',
]
