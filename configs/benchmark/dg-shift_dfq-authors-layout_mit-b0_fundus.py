# tools/benchmark_dg.py variant 'dfq-authors-layout': the 'dfq' variant with
# the authors' published RDWT grouping (reshape without transpose) on the
# backbone and the loss alike.
_base_ = './dg-shift_dfq_mit-b0_fundus.py'
model = dict(
    backbone=dict(rdwt_layout='authors'),
    decode_head=dict(loss_rdwt=dict(layout='authors')),
)
