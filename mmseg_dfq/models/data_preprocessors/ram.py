"""RAM (random amplitude mixup, RAM-DSIR, ECCV 2022) as a data preprocessor.

RAM-DSIR trains on a second view of every image whose low-frequency
Fourier amplitude is mixed with that of another training image, phase kept
(the DFQ authors' ``train_feed.py`` has its ``--ram --consistency`` flags,
but as published that branch does not run). Here the partner is
drawn from the same domain-mixed batch (``DomainMixSampler`` guarantees
every source domain in every batch), using the ``domain_idx`` meta that
travels with each sample, and the second views are appended to the batch.
:class:`~mmseg_dfq.models.segmentors.RAMEncoderDecoder` splits the two
halves again and adds the consistency loss; with mmseg's plain
``EncoderDecoder`` the doubled batch simply trains on both views.
"""

import math
from typing import Optional, Sequence

import torch
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

# r ~ U{0.1, 0.2, ..., 1.0}, as RAM-DSIR's randint(1, 10) / 10.
DEFAULT_RATIOS = tuple(k / 10 for k in range(1, 11))


def low_freq_window(height: int, width: int, window: float):
    """Rows and columns of the centred low-frequency window after fftshift.

    Args:
        height (int): Image height H.
        width (int): Image width W.
        window (float): Half-size of the window as a fraction of min(H, W).

    Returns:
        tuple[slice, slice]: Row and column slices of the (2b + 1)-wide
        window centred on the zero frequency, b = floor(min(H, W) * window).
    """
    b = math.floor(min(height, width) * window)
    ch, cw = height // 2, width // 2
    return slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1)


def low_freq_amplitude_mix(
    src: torch.Tensor,
    other: torch.Tensor,
    ratio: torch.Tensor,
    window: float = 0.1,
) -> torch.Tensor:
    """Mix the low-frequency amplitude of ``src`` with that of ``other``.

    Per image and channel: ``A = |F(src)|``, ``P = angle(F(src))``; inside
    the centred window (after fftshift) ``A <- A * r + |F(other)| * (1 - r)``;
    the result is the real part of ``F^-1(A exp(iP))``.

    Args:
        src (Tensor): Images, (B, C, H, W).
        other (Tensor): Partner images, same shape.
        ratio (Tensor): Weight r of the source amplitude per image, (B,).
        window (float): Window half-size as a fraction of min(H, W).
            Default: 0.1.

    Returns:
        Tensor: The mixed images, float32, (B, C, H, W) (not clipped).
    """
    if src.shape != other.shape:
        raise ValueError(
            f'RAM: source {tuple(src.shape)} and partner '
            f'{tuple(other.shape)} images differ in shape'
        )
    dims = (-2, -1)
    spec = torch.fft.fft2(src.float(), dim=dims)
    amp = torch.fft.fftshift(spec.abs(), dim=dims)
    amp_other = torch.fft.fftshift(
        torch.fft.fft2(other.float(), dim=dims).abs(), dim=dims
    )
    rows, cols = low_freq_window(src.shape[-2], src.shape[-1], window)
    r = ratio.to(amp).view(-1, 1, 1, 1)
    amp[..., rows, cols] = amp[..., rows, cols] * r + amp_other[
        ..., rows, cols
    ] * (1 - r)
    amp = torch.fft.ifftshift(amp, dim=dims)
    # The window is symmetric about the zero frequency, so the spectrum stays
    # Hermitian and the imaginary part is round-off only.
    return torch.fft.ifft2(torch.polar(amp, spec.angle()), dim=dims).real


@MODELS.register_module()
class RAMSegDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` that appends a RAM view of every image.

    In training, for a batch of B images it draws for each image i a partner
    j from another source domain of the same batch and a ratio r, mixes the
    low-frequency amplitudes of the raw pixels (before BGR->RGB and
    normalisation, as RAM-DSIR does on 0-255 fundus images), clips to
    ``clip_range`` and returns 2B images: the B originals, then the B mixed
    views. The second-view data samples are copies of the originals with
    metainfo ``ram_view=True``, ``ram_partner=j`` (index in the batch) and
    ``ram_ratio=r``; the originals get ``ram_view=False``. Labels are
    shared: the mix keeps the phase, hence the anatomy. Validation and test
    batches pass through unchanged.

    Departure from RAM-DSIR: its partner is a random training image of any
    source domain (another one with ``--is_out_domain``), resized but not
    augmented; here it is another image of the same batch, after the
    training augmentation.

    Args:
        ram_window (float): Half-size of the low-frequency window as a
            fraction of min(H, W) (RAM-DSIR's ``L``). Default: 0.1.
        ratios (Sequence[float]): Values r is drawn from, uniformly.
            Default: (0.1, 0.2, ..., 1.0).
        cross_domain (bool): Partner from another domain (RAM-DSIR's
            ``--is_out_domain``); False allows any other image of the
            batch, of any domain (RAM-DSIR's default). Default: True.
        clip_range (Sequence[float], optional): Range the mixed pixels are
            clipped to; None keeps them unclipped. Default: (0, 255).
        domain_key (str): Metainfo key holding each sample's domain.
            Default: 'domain_idx'.
        **kwargs: :class:`SegDataPreProcessor` arguments.
    """

    def __init__(
        self,
        ram_window: float = 0.1,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        cross_domain: bool = True,
        clip_range: Optional[Sequence[float]] = (0.0, 255.0),
        domain_key: str = 'domain_idx',
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= ram_window <= 0.5:
            raise ValueError(
                f'RAMSegDataPreProcessor: ram_window must lie in [0, 0.5] '
                f'(a fraction of min(H, W)), got {ram_window}'
            )
        ratios = tuple(float(r) for r in ratios)
        if not ratios or not all(0 <= r <= 1 for r in ratios):
            raise ValueError(
                'RAMSegDataPreProcessor: ratios must be a non-empty sequence '
                f'of values in [0, 1], got {ratios}'
            )
        if clip_range is not None and len(clip_range) != 2:
            raise ValueError(
                'RAMSegDataPreProcessor: clip_range must be (low, high) or '
                f'None, got {clip_range}'
            )
        self.ram_window = ram_window
        self.ratios = ratios
        self.cross_domain = cross_domain
        self.clip_range = None if clip_range is None else tuple(clip_range)
        self.domain_key = domain_key

    def draw_ratios(self, n: int) -> torch.Tensor:
        """Draw n ratios uniformly from ``ratios``; returns (n,) float64."""
        index = torch.randint(len(self.ratios), (n,))
        # float64 so that the logged ram_ratio is exactly one of ``ratios``.
        return torch.tensor(self.ratios, dtype=torch.float64)[index]

    def pick_partners(self, data_samples) -> list:
        """Draw a partner index for every sample of the batch.

        Args:
            data_samples (list[SegDataSample]): The batch, each with the
                ``domain_key`` metainfo.

        Returns:
            list[int]: Partner index j of each sample i (j != i).

        Raises:
            ValueError: If a sample lacks the domain metainfo, or a sample
                has no eligible partner in the batch.
        """
        domains = []
        for i, sample in enumerate(data_samples):
            if self.domain_key not in sample.metainfo:
                raise ValueError(
                    f'RAMSegDataPreProcessor: sample {i} '
                    f'({sample.metainfo.get("img_path", "?")}) has no '
                    f'{self.domain_key!r} metainfo; pack it with '
                    'PackDomainSegInputs in the pipeline'
                )
            domains.append(sample.metainfo[self.domain_key])
        partners = []
        for i, domain in enumerate(domains):
            eligible = [
                j
                for j, d in enumerate(domains)
                if j != i and (d != domain or not self.cross_domain)
            ]
            if not eligible:
                which = 'from another domain ' if self.cross_domain else ''
                raise ValueError(
                    f'RAMSegDataPreProcessor: sample {i} (domain {domain!r}) '
                    f'has no partner {which}in its batch (batch domains: '
                    f'{domains}); train with DomainMixSampler so every '
                    'batch mixes the source domains (cross_domain=False '
                    'also accepts a partner of the same domain)'
                )
            pick = int(torch.randint(len(eligible), (1,)))
            partners.append(eligible[pick])
        return partners

    def make_views(self, inputs, data_samples):
        """Build the RAM view of every image of a training batch.

        Args:
            inputs (list[Tensor] | Tensor): Raw images, each (C, H, W), all
                the same size.
            data_samples (list[SegDataSample]): Their samples.

        Returns:
            tuple[list[Tensor], list[SegDataSample]]: The mixed views
            (float, (C, H, W)) and their samples (copies with the ``ram_*``
            metainfo).
        """
        inputs = list(inputs)
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) != 1:
            raise ValueError(
                'RAMSegDataPreProcessor: training images of a batch must '
                f'share one size to mix their spectra, got {sorted(shapes)}; '
                'crop them to a fixed size in the pipeline'
            )
        partners = self.pick_partners(data_samples)
        ratios = self.draw_ratios(len(inputs))
        src = torch.stack(inputs)
        views = low_freq_amplitude_mix(
            src, src[partners], ratios.to(src.device), self.ram_window
        )
        if self.clip_range is not None:
            views = views.clamp(*self.clip_range)
        view_samples = []
        for sample, j, r in zip(data_samples, partners, ratios.tolist()):
            sample.set_metainfo(dict(ram_view=False))
            view = sample.clone()
            view.set_metainfo(dict(ram_view=True, ram_partner=j, ram_ratio=r))
            view_samples.append(view)
        return list(views), view_samples

    def forward(self, data: dict, training: bool = False) -> dict:
        """Pre-process a batch; in training, append the RAM views.

        Args:
            data (dict): ``inputs`` (list of (C, H, W) images) and
                ``data_samples`` from the dataloader.
            training (bool): Whether this is a training batch.

        Returns:
            dict: ``inputs`` (Tensor, (2B, C, H, W) in training, else
            (B, C, H, W)) and ``data_samples`` (2B or B samples).
        """
        if not training:
            return super().forward(data, training)
        data = self.cast_data(data)
        data_samples = data.get('data_samples')
        if data_samples is None:
            raise ValueError(
                'RAMSegDataPreProcessor: training batches need data_samples'
            )
        views, view_samples = self.make_views(data['inputs'], data_samples)
        both = dict(
            inputs=list(data['inputs']) + views,
            data_samples=list(data_samples) + view_samples,
        )
        return super().forward(both, training)
