# Full DFQ, MiT-b0 (32-64-160-256 channels): RDWT on all four MiT stages
# (instance-normalised maps feed the next stage and the head) + DFQHead + the
# RDWT decorrelation loss (lambda 1e-4, summed over the stages).
_base_ = './dfqhead_mit-b0.py'
model = dict(
    backbone=dict(type='RDWTMixVisionTransformer', rdwt_stages=(0, 1, 2, 3)),
    decode_head=dict(loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4)),
)
