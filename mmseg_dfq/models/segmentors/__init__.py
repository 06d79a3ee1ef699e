from .multilabel import MultiLabelEncoderDecoder

__all__ = ['MultiLabelEncoderDecoder']
