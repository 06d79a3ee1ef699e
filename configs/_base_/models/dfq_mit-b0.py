# Full DFQ: MiT with RDWT on all four stages + DFQHead + RDWT loss
# (lambda 1e-4, summed over the stages), MiT-b0 (32-64-160-256 channels).
# The dataset config sets num_classes and the data preprocessor; larger
# MiTs inherit this file.
custom_imports = dict(imports=['mmseg_dfq'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0_20220624-7e0fe6dd.pth'  # noqa
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
    ),
    backbone=dict(
        type='RDWTMixVisionTransformer',
        rdwt_stages=(0, 1, 2, 3),
        in_channels=3,
        embed_dims=32,
        num_stages=4,
        num_layers=[2, 2, 2, 2],
        num_heads=[1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
    ),
    decode_head=dict(
        type='DFQHead',
        in_channels=[32, 64, 160, 256],
        in_index=[0, 1, 2, 3],
        channels=768,
        num_heads=(2, 5, 8),
        drop_path_rate=0.1,
        loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4),
        dropout_ratio=0.1,
        num_classes=3,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            # Per-class soft Dice of the foreground classes (mmseg's DiceLoss
            # pools classes and pixels, which hides small structures).
            dict(type='ClassDiceLoss', loss_weight=1.0),
        ],
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
