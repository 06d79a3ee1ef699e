# Prostate leave-one-domain-out split: train on sites [1, 2, 4, 5, 6], held-out
# target site 3 (I2CVB); 2 slices per source site in every batch.
_base_ = './prostate_dg.py'
train_dataloader = dict(
    sampler=dict(domain_counts=[2, 2, 2, 2, 2]),
    dataset=dict(domains=[1, 2, 4, 5, 6]),
)
val_dataloader = dict(dataset=dict(domains=[3], unseen_domains=[3]))
test_dataloader = val_dataloader
