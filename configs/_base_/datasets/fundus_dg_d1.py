# Fundus leave-one-domain-out split: train on domains [2, 3, 4], held-out
# target Domain1. Per-batch counts {2: 3, 3: 6, 4: 7} (of 16) follow the
# authors' mix.
# Test covers every domain's test split, so the table shows the unseen target
# next to the seen sources.
_base_ = './fundus_dg.py'
train_dataloader = dict(
    # _delete_: replace the base's counts (mmengine would merge the keys).
    sampler=dict(domain_counts={'_delete_': True, 2: 3, 3: 6, 4: 7}),
    dataset=dict(domains=[2, 3, 4]),
)
val_dataloader = dict(dataset=dict(domains=[1], unseen_domains=[1]))
test_dataloader = dict(dataset=dict(domains=[1, 2, 3, 4], unseen_domains=[1]))
