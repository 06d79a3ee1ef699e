"""EncoderDecoder whose output channels are independent sigmoids."""

from typing import List, Optional, Sequence

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder, SegTTAModel
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

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

    By default mmseg resizes the head's logits to the network input first
    (its ``predict`` path, shared by test-time augmentation, sliding
    windows and every tool); the sigmoid probabilities are then resized
    from there to the original image. ``resize_once=True`` does what the
    authors' test script does instead: the sigmoid of the head's own output
    (1/4 of the input for DFQ) is resized once, straight to the original
    image. It needs whole-image inference (``test_cfg.mode='whole'``);
    padding and flips are undone at the head's resolution.

    Train with :class:`~mmseg_dfq.models.losses.MultiLabelBCELoss` and
    :class:`~mmseg_dfq.models.losses.MultiLabelDiceLoss` on the same
    ``label_sets``.

    Args:
        label_sets (Sequence[Sequence[int]]): Labels covered by each output
            channel of the decode head.
        threshold (float): Probability above which a channel is on.
            Default: 0.75.
        resize_once (bool): One bilinear resize of the probabilities, from
            the head's output to the original image (the authors'), instead
            of mmseg's two. Default: False.
        **kwargs: :class:`EncoderDecoder` arguments.
    """

    def __init__(
        self,
        label_sets: Sequence[Sequence[int]],
        threshold: float = 0.75,
        resize_once: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.resize_once = bool(resize_once)
        mode = (self.test_cfg or {}).get('mode', 'whole')
        if self.resize_once and mode != 'whole':
            raise ValueError(
                'MultiLabelEncoderDecoder: resize_once=True needs whole-image '
                f'inference, got test_cfg.mode={mode!r} '
                '(sliding windows are put together at the input size)'
            )
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

    def predict(
        self,
        inputs: torch.Tensor,
        data_samples: Optional[List[SegDataSample]] = None,
    ) -> List[SegDataSample]:
        """mmseg's ``predict``; with ``resize_once``, the authors' resize.

        Args:
            inputs (Tensor): (B, C, H, W) pre-processed images.
            data_samples (list[SegDataSample], optional): With metainfo;
                None treats the input size as the original size.

        Returns:
            list[SegDataSample]: ``seg_logits`` (probabilities) and
            ``pred_sem_seg`` set.
        """
        if not self.resize_once:
            return super().predict(inputs, data_samples)
        if data_samples is None:
            hw = tuple(inputs.shape[-2:])
            data_samples = [
                SegDataSample(
                    metainfo=dict(ori_shape=hw, img_shape=hw, pad_shape=hw)
                )
                for _ in range(len(inputs))
            ]
        logits = self.decode_head.forward(self.extract_feat(inputs))
        samples = self._resize_once(
            logits.sigmoid(), data_samples, tuple(inputs.shape[-2:])
        )
        return self._with_labels(samples)

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
        # resizes; fed probabilities it resizes those.
        samples = super().postprocess_result(
            seg_logits.sigmoid(), data_samples
        )
        return self._with_labels(samples)

    def _with_labels(self, samples: List[SegDataSample]) -> list:
        """Set each sample's ``pred_sem_seg`` from its probabilities."""
        for sample in samples:
            probs = sample.seg_logits.data
            sample.pred_sem_seg = PixelData(data=self.labels_from_probs(probs))
        return samples

    def _resize_once(
        self,
        probs: torch.Tensor,
        data_samples: List[SegDataSample],
        input_shape: tuple,
    ) -> List[SegDataSample]:
        """Padding off, flips undone, one resize to the original image."""
        in_h, in_w = input_shape
        out_h, out_w = probs.shape[-2:]
        for i, sample in enumerate(data_samples):
            meta = sample.metainfo
            padding = meta.get(
                'img_padding_size', meta.get('padding_size', [0] * 4)
            )
            left, right, top, bottom = (
                _at_output_scale(p, n_in, n_out, 'padding')
                for p, n_in, n_out in zip(
                    padding,
                    (in_w, in_w, in_h, in_h),
                    (out_w, out_w, out_h, out_h),
                )
            )
            p = probs[i : i + 1, :, top : out_h - bottom, left : out_w - right]
            if meta.get('flip', False):
                direction = meta.get('flip_direction')
                if direction not in ('horizontal', 'vertical'):
                    raise ValueError(
                        'MultiLabelEncoderDecoder: unknown flip_direction '
                        f'{direction!r}'
                    )
                p = p.flip(dims=(3,) if direction == 'horizontal' else (2,))
            p = resize(
                p,
                size=meta['ori_shape'],
                mode='bilinear',
                align_corners=self.align_corners,
                warning=False,
            )
            sample.set_data(dict(seg_logits=PixelData(data=p.squeeze(0))))
        return data_samples


@MODELS.register_module()
class MultiLabelTTAModel(SegTTAModel):
    """Test-time augmentation for :class:`MultiLabelEncoderDecoder`.

    mmseg's ``SegTTAModel`` takes a softmax over the channels and their
    arg-max, which for independent sigmoid channels (cup, disc) would give
    channel indices as labels. This one averages each channel's
    probabilities over the augmented views (already flipped back and
    resized by the segmentor) and composes the labels as the segmentor
    does (``labels_from_probs``, the same threshold). Use it as
    ``tta_model = dict(type='MultiLabelTTAModel')``.
    """

    def merge_preds(
        self, data_samples_list: List[List[SegDataSample]]
    ) -> list:
        """One prediction per image from its augmented views.

        Args:
            data_samples_list (list[list[SegDataSample]]): Per image, the
                predictions of its views (``seg_logits`` = probabilities).

        Returns:
            list[SegDataSample]: The last view's sample with the averaged
            probabilities, their labels, and the first view's ground truth
            and image path (as ``SegTTAModel`` keeps them).
        """
        if not isinstance(self.module, MultiLabelEncoderDecoder):
            raise TypeError(
                'MultiLabelTTAModel wraps a MultiLabelEncoderDecoder, got '
                f'{type(self.module).__name__}'
            )
        merged = []
        for views in data_samples_list:
            probs = torch.stack([v.seg_logits.data for v in views]).mean(0)
            sample = views[-1]
            sample.set_data(
                dict(
                    seg_logits=PixelData(data=probs),
                    pred_sem_seg=PixelData(
                        data=self.module.labels_from_probs(probs)
                    ),
                )
            )
            if 'gt_sem_seg' in views[0]:
                sample.set_data(dict(gt_sem_seg=views[0].gt_sem_seg))
            sample.set_metainfo(dict(img_path=views[0].img_path))
            merged.append(sample)
        return merged


def _at_output_scale(pixels: int, n_in: int, n_out: int, what: str) -> int:
    """Input pixels -> pixels of an output n_out/n_in the size, exactly."""
    scaled, rest = divmod(int(pixels) * n_out, n_in)
    if rest:
        raise ValueError(
            f'MultiLabelEncoderDecoder(resize_once=True): {what} of {pixels} '
            f'input pixels is not a whole number of output pixels '
            f'(output {n_out} of input {n_in}); pad to a multiple of the '
            "head's output stride"
        )
    return scaled
