# DFQ's decode head for a model that comes from another config (mmseg's
# own, say): DFQHead with the RDWT decorrelation loss (1e-4, as in
# dfq_mit-b0.py) and our segmentation losses. The settings that depend on
# the backbone (in_channels, channels, num_heads) are the config's.
# It is a variable, not a `model` key: the model comes from another base
# of the same config, and mmengine refuses a key that two bases both set.
# A config takes it as
#   model = dict(decode_head=dict(
#       _delete_=True, **_base_.dfq_head, in_channels=..., channels=...,
#       num_heads=...))
# (`_delete_` drops the other model's head; `_base_.dfq_head` is mmengine's
# reference to a base variable).
# The config also makes an RDWT producer the last stage before the head
# (RDWTMixVisionTransformer, or RDWTNeck), so the loss takes the covariance
# of its already instance-normalised maps as they come (normalize=False, as
# the authors do). On features nothing normalised the build refuses it and
# names model.decode_head.loss_rdwt.normalize=True.
custom_imports = dict(imports=['mmseg_dfq'], allow_failed_imports=False)
dfq_head = dict(
    type='DFQHead',
    in_index=[0, 1, 2, 3],
    drop_path_rate=0.1,
    # The authors' head has no dropout before the classifier.
    dropout_ratio=0.0,
    num_classes=3,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    align_corners=False,
    loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4, normalize=False),
    loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='ClassDiceLoss', loss_weight=1.0),
    ],
)
