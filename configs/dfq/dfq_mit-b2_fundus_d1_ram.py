# DFQ + RAM (see configs/_base_/models/dfq-ram_mit-b0.py), MiT-b2, fundus
# OD/OC, held-out Domain1: the DFQ config with the RAM data preprocessor and
# segmentor.
_base_ = './dfq_mit-b2_fundus_d1.py'
model = dict(
    type='RAMEncoderDecoder',
    consistency_weight=0.5,
    data_preprocessor=dict(
        type='RAMSegDataPreProcessor', ram_window=0.1, cross_domain=True
    ),
)
