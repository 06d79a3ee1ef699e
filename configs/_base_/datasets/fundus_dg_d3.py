# Fundus leave-one-domain-out split: train on domains [1, 2, 4], held-out
# target Domain3. Per-batch counts {1: 2, 2: 4, 4: 10} (of 16) follow the
# authors' mix.
# Test covers every domain's test split, so the table shows the unseen target
# next to the seen sources.
_base_ = './fundus_dg.py'
train_dataloader = dict(
    # _delete_: replace the base's counts (mmengine would merge the keys).
    sampler=dict(domain_counts={'_delete_': True, 1: 2, 2: 4, 4: 10}),
    dataset=dict(domains=[1, 2, 4]),
)
val_dataloader = dict(dataset=dict(domains=[3], unseen_domains=[3]))
test_dataloader = dict(dataset=dict(domains=[1, 2, 3, 4], unseen_domains=[3]))
