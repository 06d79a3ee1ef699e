# DFQ parts on a DINOv2 ViT-S/14 from mmpretrain. The ViT gives four maps of
# blocks 3, 6, 9 and 12 (384 channels, all at stride 14); mmseg's
# MultiLevelNeck resizes them to a pyramid at strides 3.5, 7, 14 and 28,
# RDWTNeck instance-normalises it and DFQHead decodes it. mmengine builds a
# list of necks into a Sequential, so the two chain in EncoderDecoder.
# Input sizes should be multiples of 14 (the patch embedding pads others).
# Weights: mmpretrain's DINOv2 conversion (keys 'backbone.*', a 37 x 37
# position grid for 518 px; the ViT interpolates it to any input size).
_base_ = './dfq_mit-b0.py'
custom_imports = dict(
    imports=['mmseg_dfq', 'mmpretrain.models'], allow_failed_imports=False
)
checkpoint = 'https://download.openmmlab.com/mmpretrain/v1.0/dinov2/vit-small-p14_dinov2-pre_3rdparty_20230426-5641ca5a.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.VisionTransformer',
        arch='dinov2-small',
        img_size=518,
        patch_size=14,
        layer_scale_init_value=1e-5,
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        # 12 freezes the whole ViT (patch and position embeddings, blocks,
        # final norm): only the neck and head train.
        frozen_stages=-1,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.'
        ),
    ),
    neck=[
        dict(
            type='MultiLevelNeck',
            in_channels=[384, 384, 384, 384],
            out_channels=384,
            scales=[4, 2, 1, 0.5],
        ),
        dict(type='RDWTNeck'),
    ],
    decode_head=dict(in_channels=[384, 384, 384, 384], num_heads=(6, 6, 6)),
)
