# DFQ parts on mmpretrain's ConvNeXt-T (96-192-384-768 channels at strides
# 4-32): the backbone's four normalised stage maps go through RDWTNeck
# (instance-normalised) into DFQHead with the RDWT loss. Only the backbone
# and the head's input widths differ from the MiT model. ConvNeXt settings
# as in mmseg's own ConvNeXt-T UPerNet config; ImageNet-1k weights from
# mmpretrain's model zoo (an ImageClassifier checkpoint: keys 'backbone.*').
_base_ = './dfq_mit-b0.py'
custom_imports = dict(
    imports=['mmseg_dfq', 'mmpretrain.models'], allow_failed_imports=False
)
checkpoint = 'https://download.openmmlab.com/mmclassification/v0/convnext/convnext-tiny_32xb128_in1k_20221207-998cf3e9.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        gap_before_final_norm=False,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.'
        ),
    ),
    neck=dict(type='RDWTNeck'),
    # 64-channel attention heads, as DFQ on MiT-b2..b5.
    decode_head=dict(in_channels=[96, 192, 384, 768], num_heads=(3, 6, 12)),
)
