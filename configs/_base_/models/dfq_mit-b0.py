# Full DFQ, MiT-b0 (32-64-160-256 channels): RDWT on all four MiT stages
# (instance-normalised maps feed the next stage and the head) + DFQHead + the
# RDWT decorrelation loss, 1e-4 x the mean of the four stage terms (the
# authors' objective; reduction='sum' gives 4x their gradient).
# RDWT normalises true channels here (rdwt_layout='channels'); the authors'
# published layout is rdwt_layout='authors' on the backbone AND
# layout='authors' on the loss (see configs/dfq/*_authors.py and the
# departures table in docs/design.md).
# normalize=False: the loss takes the covariance of the maps the backbone
# already instance-normalised, as the authors do (normalising them again
# would cost an instance norm per stage and move the value by ~1e-5). The
# bases that replace the backbone with an RDWTNeck over all levels
# (dfq_convnext-t.py, dfq_vit-s14-dinov2.py) keep it; the build refuses it
# where a level the loss sees was not normalised.
_base_ = './dfqhead_mit-b0.py'
model = dict(
    backbone=dict(
        type='RDWTMixVisionTransformer',
        rdwt_stages=(0, 1, 2, 3),
        rdwt_layout='channels',
    ),
    decode_head=dict(
        loss_rdwt=dict(
            type='RDWTLoss',
            loss_weight=1e-4,
            reduction='mean',
            layout='channels',
            normalize=False,
        )
    ),
)
