# The published DFQ, fundus, held-out Domain1, MiT-b2: everything this
# project does like the authors by default (their head, 1e-4 x the mean of
# the stage terms, their augmentation and epochs) plus the choices where the
# default departs on purpose, set back to the authors' code:
# - RDWT grouping: their reshape of the (B, N, C) tokens without a transpose
#   ('authors') on the backbone and, equally, on the loss (a mismatch is an
#   error);
# - the logged RDWT value includes their constant diagonal (same gradient);
# - keys/values pooled with their fixed AvgPool2d(2, 4, 8) (equal to the
#   adaptive default at sizes divisible by 32, as their 256 crops are).
# What still differs is listed in the departures table of docs/design.md.
_base_ = './dfq_mit-b2_fundus_d1.py'
model = dict(
    backbone=dict(rdwt_layout='authors'),
    decode_head=dict(
        pool_ratios=(2, 4, 8),
        loss_rdwt=dict(layout='authors', with_diagonal=True),
    ),
)
