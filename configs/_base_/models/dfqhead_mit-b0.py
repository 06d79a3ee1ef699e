# Ablation: MiT + DFQHead without RDWT, MiT-b0 (32-64-160-256 channels):
# the SegFormer baseline with its head swapped for the authors' DFQ head
# (FeedFormerHead: three LayerNorms per block, bias-free q/kv, no dropout
# before the classifier), nothing else.
_base_ = './segformer_mit-b0.py'
model = dict(
    decode_head=dict(
        type='DFQHead',
        num_heads=(2, 5, 8),
        drop_path_rate=0.1,
        # The SegFormer base sets 0.1; the authors' head has no dropout.
        dropout_ratio=0.0,
        # loss_rdwt left at DFQHead's default None: no RDWT loss.
    )
)
