# The DFQ authors' training and test habits (BiQiWHU/DFQ) that are not part
# of the model or data, shared by the *_authors.py configs. Each is an
# authors_* value that a config merges with {{_base_.authors_*}}: the keys a
# full config already defines (custom_hooks, param_scheduler, the head's
# norm_cfg, the test dataloader) cannot be set by a second base (mmengine
# refuses a key defined in two bases). Rows of docs/design.md's departures
# table: "BN statistics in training", "BN at test time", "learning-rate
# schedule".
# An empty _base_ keeps mmengine reading this file as a classic config
# although it imports the hook list.
_base_ = []
from mmseg_dfq.config import reliability_hooks  # noqa: E402

# Their DataParallel on two GPUs (inferred from their training's
# two-replica RDWT average, (iw_loss[0] + iw_loss[1]) / 2): BatchNorm
# statistics per half batch, running statistics from the first half. Run
# these configs on one process.
authors_norm_cfg = dict(type='ChunkBN', num_chunks=2, requires_grad=True)
# Their test scripts (not their in-training validation) normalise each test
# batch of 8 with its own BatchNorm statistics (eval(), then BatchNorm2d
# back in training mode; with ChunkBN each half of 4 on its own, as
# DataParallel splits it), one domain / volume at a time: no batch spans
# two (DomainBatchSampler). BatchStatsBNHook comes after the schedule's
# reliability hooks (a list is replaced, not merged).
authors_test_batch_size = 8
authors_test_batch_sampler = dict(type='DomainBatchSampler')
authors_custom_hooks = reliability_hooks() + [
    dict(type='BatchStatsBNHook', phases=('test',)),
]
# Their poly decay runs one iteration behind mmengine's PolyLR (they set the
# rate after optimizer.step from the finished iteration) and never reaches
# 0; end is the schedules' max_epochs (configs/_base_/schedules/
# dfq_fundus.py, which dfq_prostate.py inherits).
authors_param_scheduler = [
    dict(
        type='LaggedPolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=200,
        by_epoch=True,
        convert_to_iter_based=True,
    )
]
