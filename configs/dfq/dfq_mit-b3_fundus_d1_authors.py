# The published DFQ with the authors' own backbone, MiT-b3 (fundus,
# held-out Domain1); see dfq_mit-b2_fundus_d1_authors.py for what it sets.
# tools/convert/dfq_official_to_mmseg.py writes checkpoints for this model.
_base_ = './dfq_mit-b2_fundus_d1_authors.py'
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b3_20220624-13b1141c.pth'  # noqa
model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
        num_layers=[3, 4, 18, 3],
    )
)
