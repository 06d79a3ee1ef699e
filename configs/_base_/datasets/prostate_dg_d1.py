# Prostate leave-one-domain-out split: train on sites [2, 3, 4, 5, 6], held-out
# target site 1 (RUNMC); 2 slices per source site in every batch.
_base_ = './prostate_dg.py'
train_dataloader = dict(
    # _delete_: replace the base's counts (mmengine would merge the keys).
    sampler=dict(
        domain_counts={'_delete_': True, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2}
    ),
    dataset=dict(domains=[2, 3, 4, 5, 6]),
)
val_dataloader = dict(dataset=dict(domains=[1], unseen_domains=[1]))
test_dataloader = val_dataloader
