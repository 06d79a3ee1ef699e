# tools/benchmark_dg.py variant 'dfqhead':
# MiT-b0 + DFQHead without RDWT,
# on the benchmark recipe with the demo's model edits.
_base_ = [
    '../_base_/models/dfqhead_mit-b0.py',
    '../_base_/dg_shift_fundus.py',
]
model = {{_base_.demo_model}}
