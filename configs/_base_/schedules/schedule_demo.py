# Short schedule of the CPU demo: the authors' optimiser and poly decay over
# 300 iterations, one validation at the end. Iteration-based, because the
# generated demo data is tiny (an epoch of DomainMixSampler is a few
# batches); the reliability hooks of dfq_fundus.py stay on.
_base_ = './dfq_fundus.py'
max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=1e-3))
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
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters,
)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
)
