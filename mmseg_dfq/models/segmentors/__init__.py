from .multilabel import MultiLabelEncoderDecoder
from .ram_encoder_decoder import RAMEncoderDecoder, symmetric_kl

__all__ = ['MultiLabelEncoderDecoder', 'RAMEncoderDecoder', 'symmetric_kl']
