# CPU demo (tools/demo.py fundus): DFQ with a MiT-b0 backbone trained from
# scratch (no download) and a 128-channel fusion, on generated fundus data
# (96 px images, 64 px crops), held-out Domain1, 300 iterations. The data,
# schedule and model edits are the fundus demo recipe's.
_base_ = ['../_base_/models/dfq_mit-b0.py', '../_base_/demo_fundus.py']
model = {{_base_.demo_model}}
