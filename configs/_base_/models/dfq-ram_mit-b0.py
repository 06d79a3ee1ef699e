# DFQ + RAM (the DFQ authors' train_feed.py --ram --consistency
# --consistency_type kd, from RAM-DSIR): every training image also appears
# with its low-frequency Fourier amplitude mixed with that of an image of
# another source domain of the batch; both views get the segmentation (and
# RDWT) losses, plus 0.5 x the symmetric KL between their predictions
# (logged as ram.loss_consistency). A training step sees twice the images.
# Needs batches that mix the source domains (DomainMixSampler).
_base_ = './dfq_mit-b0.py'
model = dict(
    type='RAMEncoderDecoder',
    consistency_weight=0.5,
    data_preprocessor=dict(
        type='RAMSegDataPreProcessor', ram_window=0.1, cross_domain=True
    ),
)
