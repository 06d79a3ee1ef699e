# dfq_mit-b2_fundus_d1 on the GPU fast path (configs/_base_/fast_path.py):
# compiled backbone + head with CUDA graphs, TF32, fused Adam, channels-last,
# dataloaders for a 16-core host. Same model, data and schedule.
# bf16: --cfg-options optim_wrapper.type=BF16OptimWrapper
_base_ = ['./dfq_mit-b2_fundus_d1.py', '../_base_/fast_path.py']
optim_wrapper = {{_base_.fast_optim_wrapper}}
train_dataloader = {{_base_.fast_train_dataloader}}
val_dataloader = {{_base_.fast_eval_dataloader}}
test_dataloader = {{_base_.fast_eval_dataloader}}
