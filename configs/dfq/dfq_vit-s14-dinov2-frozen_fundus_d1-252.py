# The DINOv2 model with its ViT frozen (no drop path: nothing in it trains):
# only MultiLevelNeck and DFQHead learn, at the recipe's full rate. No
# activations of the ViT are kept for a backward pass, so a step costs less
# memory and time (README, "Other backbones").
_base_ = './dfq_vit-s14-dinov2_fundus_d1-252.py'
model = dict(backbone=dict(frozen_stages=12, drop_path_rate=0.0))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
