# The CPU demo (dfq_mit-tiny_demo_fundus.py) with RAM + consistency: about
# twice its step time, since every step sees both views.
_base_ = './dfq_mit-tiny_demo_fundus.py'
model = dict(
    type='RAMEncoderDecoder',
    consistency_weight=0.5,
    data_preprocessor=dict(
        type='RAMSegDataPreProcessor', ram_window=0.1, cross_domain=True
    ),
)
