"""EncoderDecoder whose output channels are independent sigmoids."""

from typing import Optional, Sequence

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ..losses.multilabel_loss import check_label_sets


@MODELS.register_module()
class MultiLabelEncoderDecoder(EncoderDecoder):
    """Predict labels from independently thresholded sigmoid channels.

    The authors' fundus model: channel 0 is the optic cup, channel 1 the
    disc (their ``to_multilabel`` and test script), each ``sigmoid >
    threshold`` (0.75). Probabilities, not logits, are resized to the
    original image (bilinear), as in their evaluation. Channel c stands for
    the labels ``label_sets[c]`` (fundus ``[[2], [1, 2]]``: cup, then disc =
    rim + cup); a pixel gets the smallest label of each channel that is on,
    the largest of these winning (disc and cup on -> 2, disc alone -> 1,
    cup alone -> 2), whatever the channel order. The metric's OD = {1, 2}
    is then disc OR cup and OC = {2} the cup. ``seg_logits`` of the results
    hold the resized probabilities.

    Train with :class:`~mmseg_dfq.models.losses.MultiLabelBCELoss` and
    :class:`~mmseg_dfq.models.losses.MultiLabelDiceLoss` on the same
    ``label_sets``.

    Args:
        label_sets (Sequence[Sequence[int]]): Labels covered by each output
            channel of the decode head.
        threshold (float): Probability above which a channel is on.
            Default: 0.75.
        **kwargs: :class:`EncoderDecoder` arguments.
    """

    def __init__(
        self,
        label_sets: Sequence[Sequence[int]],
        threshold: float = 0.75,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.label_sets = check_label_sets(label_sets, type(self).__name__)
        if self.decode_head.out_channels != len(self.label_sets):
            raise ValueError(
                f'MultiLabelEncoderDecoder: the decode head has '
                f'{self.decode_head.out_channels} output channels but '
                f'label_sets {self.label_sets} name {len(self.label_sets)}'
            )
        if not 0 < threshold < 1:
            raise ValueError(
                'MultiLabelEncoderDecoder: threshold must be in (0, 1), '
                f'got {threshold}'
            )
        self.threshold = float(threshold)
        self._write_order = sorted(
            range(len(self.label_sets)), key=lambda c: min(self.label_sets[c])
        )

    def labels_from_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """Compose a label map from per-channel probabilities.

        Args:
            probs (Tensor): (C, H, W) sigmoid probabilities.

        Returns:
            Tensor: (1, H, W) int64 labels.
        """
        labels = torch.zeros(
            (1,) + tuple(probs.shape[1:]),
            dtype=torch.long,
            device=probs.device,
        )
        # Written from the smallest label up, so that the largest wins.
        for c in self._write_order:
            labels[0][probs[c] > self.threshold] = min(self.label_sets[c])
        return labels

    def postprocess_result(
        self, seg_logits: torch.Tensor, data_samples: Optional[list] = None
    ) -> list:
        """Resize probabilities like mmseg resizes logits, then threshold.

        Args:
            seg_logits (Tensor): (B, C, H, W) logits.
            data_samples (list[SegDataSample], optional): With metainfo.

        Returns:
            list[SegDataSample]: ``seg_logits`` (probabilities) and
            ``pred_sem_seg`` set.
        """
        # mmseg's own post-processing removes padding, undoes flips and
        # resizes; fed probabilities it resizes those, as the authors do.
        samples = super().postprocess_result(
            seg_logits.sigmoid(), data_samples
        )
        for sample in samples:
            probs = sample.seg_logits.data
            sample.pred_sem_seg = PixelData(data=self.labels_from_probs(probs))
        return samples
