# Full DFQ, MiT-b0 (32-64-160-256 channels): RDWT on all four MiT stages
# (instance-normalised maps feed the next stage and the head) + DFQHead + the
# RDWT decorrelation loss, 1e-4 x the mean of the four stage terms (the
# authors' objective; reduction='sum' gives 4x their gradient).
# RDWT normalises true channels here (rdwt_layout='channels'); the authors'
# published layout is rdwt_layout='authors' on the backbone AND
# layout='authors' on the loss (see configs/dfq/*_authors.py and the
# departures table in docs/design.md).
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
        )
    ),
)
