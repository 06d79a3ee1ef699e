# The authors' prostate recipe: as for fundus but lr 3e-4 and batches of
# 2 slices from each of the 5 source sites (10), 200 epochs. An epoch is the
# longest source site's loader, floor(slices / 2) batches, as DomainMixSampler
# counts them on the data on disk (the release's slice counts per volume
# vary by site), so the iteration count follows from the data.
_base_ = './dfq_fundus.py'
optim_wrapper = dict(optimizer=dict(lr=3e-4))
