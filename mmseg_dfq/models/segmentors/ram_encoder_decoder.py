"""EncoderDecoder that trains on both RAM views with a consistency loss."""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import add_prefix


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor):
    """KL(p || q) + KL(q || p) of two softmax predictions, element mean.

    The ``KD`` consistency of the DFQ authors' script: two
    ``torch.nn.KLDivLoss()`` terms with the default element-wise mean over
    (B, C, H, W); computed from log softmax so that a probability that
    underflows to 0 gives no NaN.

    Args:
        logits_a (Tensor): Logits of one view, (B, C, H, W).
        logits_b (Tensor): Logits of the other view, same shape.

    Returns:
        Tensor: Scalar, >= 0.
    """
    log_p = F.log_softmax(logits_a.float(), dim=1)
    log_q = F.log_softmax(logits_b.float(), dim=1)
    # p log(p/q) + q log(q/p) = (p - q)(log p - log q)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).mean()


@contextmanager
def _keep_forward_outputs(module):
    """Record what ``module.forward`` returns while inside the block.

    mmseg heads compute their logits inside ``loss()`` and return only the
    losses; recording them avoids a second head pass (and a second, different
    dropout draw) for the consistency term.
    """
    kept = []
    forward = module.forward

    def forward_and_keep(*args, **kwargs):
        out = forward(*args, **kwargs)
        kept.append(out)
        return out

    module.forward = forward_and_keep
    try:
        yield kept
    finally:
        del module.forward


@MODELS.register_module()
class RAMEncoderDecoder(EncoderDecoder):
    """EncoderDecoder for RAM batches: both views + consistency loss.

    Expects the training batches of :class:`RAMSegDataPreProcessor`: B
    originals followed by their B RAM views. Each half goes through the
    backbone, neck and heads on its own (as the authors' two forward
    passes: normalisation statistics are per view), both get the heads'
    losses (originals under ``decode.*``, views under ``ram.decode.*``; with
    DFQHead that includes the small RDWT loss of each view), and
    ``ram.loss_consistency`` adds ``consistency_weight`` times the symmetric
    KL divergence between the two softmax predictions, resized to the input
    size. Inference is the plain EncoderDecoder's.

    Args:
        consistency_weight (float): Weight of the consistency term (0.5 in
            the authors' code); 0 drops it. Default: 0.5.
        **kwargs: :class:`EncoderDecoder` arguments.
    """

    def __init__(self, consistency_weight: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if consistency_weight < 0:
            raise ValueError(
                'RAMEncoderDecoder: consistency_weight must be >= 0, got '
                f'{consistency_weight}'
            )
        self.consistency_weight = consistency_weight

    @staticmethod
    def _split_views(data_samples):
        """Index where the RAM views start; checks the batch layout."""
        n = len(data_samples)
        flags = [s.metainfo.get('ram_view') for s in data_samples]
        half = n // 2
        if n % 2 or flags != [False] * half + [True] * half:
            raise ValueError(
                'RAMEncoderDecoder needs training batches from '
                'RAMSegDataPreProcessor (B images, then their B RAM views); '
                f'got {n} samples with ram_view flags {flags}. Set '
                "model.data_preprocessor.type='RAMSegDataPreProcessor'."
            )
        return half

    def _view_losses(self, inputs, data_samples):
        """Head losses of one view and the decode head's logits."""
        x = self.extract_feat(inputs)
        with _keep_forward_outputs(self.decode_head) as kept:
            losses = self._decode_head_forward_train(x, data_samples)
        if len(kept) != 1:
            raise RuntimeError(
                f'RAMEncoderDecoder: {type(self.decode_head).__name__}.loss '
                f'called forward {len(kept)} times, expected once'
            )
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        return losses, kept[0]

    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        """Losses of a RAM batch.

        Args:
            inputs (Tensor): Originals then RAM views, (2B, C, H, W).
            data_samples (list[SegDataSample]): Their 2B samples.

        Returns:
            dict[str, Tensor]: ``decode.*`` (originals), ``ram.decode.*``
            (views), ``aux*`` likewise, and ``ram.loss_consistency``.
        """
        half = self._split_views(data_samples)
        losses, logits = self._view_losses(inputs[:half], data_samples[:half])
        ram_losses, ram_logits = self._view_losses(
            inputs[half:], data_samples[half:]
        )
        losses.update(add_prefix(ram_losses, 'ram'))
        if self.consistency_weight > 0:
            size = inputs.shape[2:]
            pair = [
                resize(
                    x, size, mode='bilinear', align_corners=self.align_corners
                )
                for x in (logits, ram_logits)
            ]
            losses['ram.loss_consistency'] = (
                self.consistency_weight * symmetric_kl(*pair)
            )
        return losses
