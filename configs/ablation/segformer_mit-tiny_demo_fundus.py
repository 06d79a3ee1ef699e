# CPU demo of the SegFormer baseline (tools/demo.py's fundus set and
# schedule, held-out Domain1): the MiT-b0 + all-MLP head of
# configs/_base_/models/segformer_mit-b0.py, trained from scratch with a
# 128-channel head, in place of the DFQ demo's model; the rest is the fundus
# demo recipe's, as in configs/dfq/dfq_mit-tiny_demo_fundus.py.
_base_ = ['../_base_/models/segformer_mit-b0.py', '../_base_/demo_fundus.py']
model = {{_base_.demo_model}}
