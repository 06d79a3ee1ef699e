# Prostate leave-one-domain-out split: train on sites [1, 2, 3, 4, 6], held-out
# target site 5 (BIDMC); 2 slices per source site in every batch.
_base_ = './prostate_dg.py'
train_dataloader = dict(
    # _delete_: replace the base's counts (mmengine would merge the keys).
    sampler=dict(
        domain_counts={'_delete_': True, 1: 2, 2: 2, 3: 2, 4: 2, 6: 2}
    ),
    dataset=dict(domains=[1, 2, 3, 4, 6]),
)
val_dataloader = dict(dataset=dict(domains=[5], unseen_domains=[5]))
test_dataloader = val_dataloader
