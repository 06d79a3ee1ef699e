# tools/benchmark_dg.py variant 'dfq-ram':
# DFQ + RAM-DSIR's augmentation and consistency loss,
# on the benchmark recipe with the demo's model edits.
_base_ = [
    '../_base_/models/dfq-ram_mit-b0.py',
    '../_base_/dg_shift_fundus.py',
]
model = {{_base_.demo_model}}
