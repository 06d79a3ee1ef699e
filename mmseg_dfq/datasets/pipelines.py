"""The fundus pipelines, built for a crop size: one home for every config.

mmengine evaluates a base config before its children and replaces lists
wholesale, so a child that changes ``crop_size`` (the 64 px CPU demo, the
252 px DINOv2 crops) would otherwise copy the whole pipeline. Configs call
these builders instead::

    from mmseg_dfq.datasets.pipelines import fundus_train_pipeline
    train_pipeline = fundus_train_pipeline(crop_size)

(a config that imports a module must assign ``_base_`` first, so that
mmengine reads it as a classic config). The result is plain dicts of
registered types, exactly what a config would spell out.
"""

from typing import List, Sequence


def _size(crop_size: Sequence[int]) -> tuple:
    size = tuple(int(v) for v in crop_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'crop_size must be (width, height), got {crop_size}')
    return size


def _backend(resize_backend: str) -> dict:
    """The Resize arguments for a backend (none for mmcv's default)."""
    if resize_backend not in ('cv2', 'pillow'):
        raise ValueError(
            f"resize_backend must be 'cv2' or 'pillow', got {resize_backend!r}"
        )
    return {} if resize_backend == 'cv2' else dict(backend=resize_backend)


def fundus_train_pipeline(
    crop_size: Sequence[int],
    cache_loading: bool = False,
    resize_backend: str = 'cv2',
) -> List[dict]:
    """The authors' fundus training pipeline at ``crop_size``.

    Resize to the crop size, then half of the time scale x and y
    independently by U(1, 1.5), random crop back to the crop size; no flip
    (see the departures table in docs/design.md).

    Args:
        crop_size (Sequence[int]): (width, height) of the crops.
        cache_loading (bool): Wrap the deterministic steps (loading and the
            first resize) in ``MemoryCache`` so they run once per worker
            (the GPU fast path). Default: False.
        resize_backend (str): ``'cv2'`` (mmcv's default) or ``'pillow'``
            (the authors' PIL resizes: bilinear images, nearest masks; PIL
            antialiases when it shrinks). Default: 'cv2'.

    Returns:
        list[dict]: The pipeline.
    """
    size = _size(crop_size)
    backend = _backend(resize_backend)
    deterministic = [
        dict(type='LoadFundusImageFromFile'),
        dict(type='LoadFundusAnnotations'),
        dict(type='Resize', scale=size, keep_ratio=False, **backend),
    ]
    if cache_loading:
        deterministic = [dict(type='MemoryCache', transforms=deterministic)]
    return deterministic + [
        dict(
            type='RandomApply',
            transforms=[
                dict(
                    type='RandomAnisotropicResize',
                    scale=size,
                    ratio_range=(1.0, 1.5),
                    **backend,
                )
            ],
            prob=0.5,
        ),
        dict(type='RandomCrop', crop_size=size),
        dict(type='PackDomainSegInputs'),
    ]


def fundus_test_pipeline(
    crop_size: Sequence[int], resize_backend: str = 'cv2'
) -> List[dict]:
    """The fundus test pipeline at ``crop_size``.

    Annotations are loaded after ``Resize`` so the metric sees original-size
    masks (mmseg resizes predictions back to ``ori_shape``). The loaders
    are chosen so that mmseg's ``inference_model`` / ``MMSegInferencer`` run
    this pipeline as is: DFQ's ``LoadImageFromFile`` (the ``mmseg_dfq``
    scope) and annotations that are skipped for an image without a mask.

    Args:
        crop_size (Sequence[int]): (width, height) the model sees.
        resize_backend (str): As for :func:`fundus_train_pipeline`.
            Default: 'cv2'.

    Returns:
        list[dict]: The pipeline.
    """
    return [
        dict(type='LoadImageFromFile', _scope_='mmseg_dfq'),
        dict(
            type='Resize',
            scale=_size(crop_size),
            keep_ratio=False,
            **_backend(resize_backend),
        ),
        dict(type='LoadFundusAnnotations'),
        dict(type='PackDomainSegInputs'),
    ]


def flip_tta_pipeline(test_pipeline: Sequence[dict]) -> List[dict]:
    """Flip test-time augmentation of a test pipeline (``--tta``).

    The test pipeline runs once up to its packing step; mmengine's
    ``TestTimeAug`` then packs the sample as is and flipped horizontally.
    mmseg's ``SegTTAModel`` (the ``tta_model`` of its
    ``default_runtime.py``) flips the second prediction back and averages
    the two softmax maps. The metric gets the unflipped copy's ground truth
    and the domain meta keys (the same in both copies).

    Args:
        test_pipeline (Sequence[dict]): A test pipeline whose last step
            packs the sample.

    Returns:
        list[dict]: The TTA pipeline.
    """
    from mmcv.transforms import BaseTransform
    from mmseg.datasets.transforms import PackSegInputs
    from mmseg.registry import TRANSFORMS

    steps = list(test_pipeline)
    last = TRANSFORMS.get(steps[-1].get('type', '')) if steps else None
    if not (
        isinstance(last, type)
        and issubclass(last, BaseTransform)
        and issubclass(last, PackSegInputs)
    ):
        raise ValueError(
            'flip_tta_pipeline: the test pipeline must end with its packing '
            f'step, got {steps[-1] if steps else "an empty pipeline"}'
        )
    flips = [
        dict(type='RandomFlip', prob=0.0, direction='horizontal'),
        dict(type='RandomFlip', prob=1.0, direction='horizontal'),
    ]
    return steps[:-1] + [
        dict(type='TestTimeAug', transforms=[flips, [steps[-1]]])
    ]
