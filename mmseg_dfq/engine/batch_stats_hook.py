"""BatchNorm on the statistics of each test batch, as the DFQ authors test."""

from typing import List, Sequence, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_PHASES = ('val', 'test')


@HOOKS.register_module()
class BatchStatsBNHook(Hook):
    """Normalise with each batch's own statistics while testing.

    The DFQ authors' test scripts (``test_fundus_slice_feed.py``,
    ``test_prostate_volume_feed.py``, unless ``--freeze_bn``) put every
    ``BatchNorm2d`` back into training mode after ``eval()``, so each test
    batch is normalised with its own mean and variance, not the running
    statistics learnt in training. A prediction then depends on which
    images share its batch (theirs: 8 consecutive test images or slices,
    split over their GPUs by ``DataParallel``). This hook does the same for
    the phases named, without touching the running statistics (they are
    neither used nor updated): before each iteration every BatchNorm
    module (``SyncBatchNorm`` included) of the model is set to training mode
    with ``track_running_stats`` off, and both are put back after the
    phase's epoch (or, if the phase stopped with an error, before the next
    training iteration). Use it with the authors' test batch size
    (``test_dataloader.batch_size=8``); on several processes ``SyncBatchNorm``
    pools the statistics of the ranks' batches.

    The project's default is eval-mode BatchNorm (a prediction may not depend
    on its batch neighbours); this is the authors' behaviour, for comparing
    with their published numbers (the departures table of docs/design.md).

    Args:
        phases (Sequence[str]): ``'test'`` (their test scripts) and / or
            ``'val'`` (their in-training validation uses eval-mode
            BatchNorm, so it is not in the default). Default: ('test',).
    """

    priority = 'NORMAL'

    def __init__(self, phases: Sequence[str] = ('test',)):
        if isinstance(phases, str):
            phases = (phases,)
        phases = tuple(phases)
        bad = [p for p in phases if p not in _PHASES]
        if bad or not phases:
            raise ValueError(
                f'BatchStatsBNHook: phases must be a non-empty subset of '
                f'{_PHASES}, got {list(phases)}'
            )
        self.phases = phases
        self._saved: List[Tuple[_BatchNorm, bool, bool]] = []

    @staticmethod
    def _norms(runner) -> List[_BatchNorm]:
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        return [m for m in model.modules() if isinstance(m, _BatchNorm)]

    def _use_batch_stats(self, runner, phase: str) -> None:
        if phase not in self.phases:
            return
        if not self._saved:
            # The model's BatchNorm modules, found once per phase.
            self._saved = [
                (m, m.training, m.track_running_stats)
                for m in self._norms(runner)
            ]
        for m, _, _ in self._saved:
            m.train()
            m.track_running_stats = False

    def _restore(self, phase: str) -> None:
        if phase not in self.phases:
            return
        for m, training, tracking in self._saved:
            nn.Module.train(m, training)
            m.track_running_stats = tracking
        self._saved = []

    def before_val_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._use_batch_stats(runner, 'val')

    def before_test_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._use_batch_stats(runner, 'test')

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._restore('val')

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._restore('test')

    def after_val(self, runner) -> None:
        self._restore('val')

    def after_test(self, runner) -> None:
        self._restore('test')

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        # A phase that stopped with an error skipped its restore: training
        # must not go on without running statistics.
        if self._saved:
            self._restore(self.phases[0])
