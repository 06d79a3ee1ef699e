# tools/benchmark_dg.py variant 'segformer':
# the SegFormer baseline (MiT-b0 + all-MLP head),
# on the benchmark recipe with the demo's model edits.
_base_ = [
    '../_base_/models/segformer_mit-b0.py',
    '../_base_/dg_shift_fundus.py',
]
model = {{_base_.demo_model}}
