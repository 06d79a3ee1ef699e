# tools/benchmark_dg.py variant 'dfq':
# full DFQ (RDWT MiT-b0 + DFQHead + RDWT loss),
# on the benchmark recipe with the demo's model edits.
_base_ = [
    '../_base_/models/dfq_mit-b0.py',
    '../_base_/dg_shift_fundus.py',
]
model = {{_base_.demo_model}}
