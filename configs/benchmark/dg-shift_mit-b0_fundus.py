# Recipe of tools/benchmark_dg.py: the CPU demo (MiT-b0 from scratch,
# 128-channel head, 64 px crops, Adam lr 1e-3 with poly decay) on the
# benchmark's generated, strongly shifted fundus data. tools/benchmark_dg.py
# (through tools/sweep.py) sets the held-out split (the domain keys of
# configs/_base_/datasets/fundus_dg_d{k}.py), the data root, the model base
# of each variant, the schedule length, the batch and the seed, and switches
# validation off; the final model is tested once on the test split of all
# four domains. Only the final checkpoint is kept, weights only (dozens of
# runs).
_base_ = '../dfq/dfq_mit-tiny_demo_fundus.py'
default_hooks = dict(
    logger=dict(interval=10**9),
    checkpoint=dict(interval=10**9, save_optimizer=False, max_keep_ckpts=1),
)
log_level = 'WARNING'
