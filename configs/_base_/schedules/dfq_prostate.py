# The authors' prostate recipe: as for fundus but lr 3e-4 and batches of
# 2 slices from each of the 5 source sites (10).
# 200 epochs in iterations: the six sites hold 116 volumes; holding out
# RUNMC (30 volumes) leaves 86 training volumes. At an assumed ~30 slices per
# volume (the release's through-plane extent varies by site) that is ~2,580
# slices = 258 iterations of 10 per epoch, x 200 = 51,600 iterations.
_base_ = './dfq_fundus.py'
max_iters = 51600
val_interval = 5160
optim_wrapper = dict(optimizer=dict(lr=3e-4))
param_scheduler = [
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=max_iters,
        by_epoch=False,
    )
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(checkpoint=dict(interval=val_interval))
