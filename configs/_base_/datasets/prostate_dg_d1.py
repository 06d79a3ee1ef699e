# Prostate leave-one-domain-out split: train on sites [2, 3, 4, 5, 6], held-out
# target site 1 (RUNMC); 2 slices per source site in every batch.
_base_ = './prostate_dg.py'
train_dataloader = dict(
    sampler=dict(domain_counts=[2, 2, 2, 2, 2]),
    dataset=dict(domains=[2, 3, 4, 5, 6]),
)
val_dataloader = dict(dataset=dict(domains=[1], unseen_domains=[1]))
test_dataloader = val_dataloader
