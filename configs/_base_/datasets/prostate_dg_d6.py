# Prostate leave-one-domain-out split: train on sites [1, 2, 3, 4, 5], held-out
# target site 6 (HK); 2 slices per source site in every batch.
_base_ = './prostate_dg.py'
train_dataloader = dict(
    sampler=dict(domain_counts=[2, 2, 2, 2, 2]),
    dataset=dict(domains=[1, 2, 3, 4, 5]),
)
val_dataloader = dict(dataset=dict(domains=[6], unseen_domains=[6]))
test_dataloader = val_dataloader
