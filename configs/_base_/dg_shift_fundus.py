# Recipe of tools/benchmark_dg.py: the fundus CPU demo recipe (MiT-b0 from
# scratch, 128-channel head, 64 px crops, Adam lr 1e-3 with poly decay) on
# the benchmark's generated, strongly shifted fundus data. Each variant is
# one config in configs/benchmark/ (this recipe + a model base + the demo's
# model edits). tools/benchmark_dg.py (through tools/sweep.py) sets the
# held-out split (the domain keys of configs/_base_/datasets/
# fundus_dg_d{k}.py), the data root, the schedule length, the batch and the
# seed, and switches validation off; the final model is tested once on the
# test split of all four domains. Only the final checkpoint is kept,
# weights only (dozens of runs).
_base_ = './demo_fundus.py'
default_hooks = dict(
    logger=dict(interval=10**9),
    checkpoint=dict(interval=10**9, save_optimizer=False, max_keep_ckpts=1),
)
log_level = 'WARNING'
