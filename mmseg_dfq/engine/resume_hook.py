"""Resume a training run exactly where it stopped, without replaying data."""

import logging
import random
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from mmseg.registry import HOOKS

from ..datasets.samplers import DomainMixSampler

STATE_KEY = 'exact_resume'
STATE_VERSION = 1


def get_rng_state() -> dict:
    """This process's Python / NumPy / torch CPU / CUDA RNG states.

    Returns:
        dict: Plain containers and tensors only, so that a checkpoint
        holding it still loads with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=(
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ),
        torch=torch.get_rng_state(),
        cuda=None,
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned.

    Args:
        state (dict): RNG states of one process.
    """
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            print_log(
                f'the checkpoint holds the RNG states of {len(cuda)} CUDA '
                f'devices, this process sees {torch.cuda.device_count()}; '
                'CUDA RNG states are not restored',
                logger='current',
                level=logging.WARNING,
            )
        else:
            torch.cuda.set_rng_state_all(cuda)


def domain_mix_sampler(dataloader) -> Optional[DomainMixSampler]:
    """The dataloader's :class:`DomainMixSampler`, if it has one."""
    sampler = getattr(dataloader, 'sampler', None)
    if isinstance(sampler, DomainMixSampler):
        return sampler
    batch_sampler = getattr(dataloader, 'batch_sampler', None)
    sampler = getattr(batch_sampler, 'sampler', None)
    return sampler if isinstance(sampler, DomainMixSampler) else None


class _ResumedIterator:
    """Stand-in for ``IterBasedTrainLoop.dataloader_iterator`` on resume.

    mmengine advances the iterator once per trained iteration before it
    trains again. With ``free`` set, those calls return None and load
    nothing (the sampler already starts at the saved position); otherwise
    they pass through (data is replayed). ``on_first_fetch`` runs right
    before the first batch that is trained on is loaded.
    """

    def __init__(
        self,
        iterator: Iterator,
        skips: int,
        free: bool,
        on_first_fetch: Callable[[], None],
    ) -> None:
        self._iterator = iterator
        self._skips = skips
        self._free = free
        self._on_first_fetch = on_first_fetch
        self._calls = 0

    def __iter__(self):
        return self

    def __next__(self):
        call, self._calls = self._calls, self._calls + 1
        if call < self._skips and self._free:
            return None
        if call == self._skips and self._on_first_fetch is not None:
            callback, self._on_first_fetch = self._on_first_fetch, None
            callback()
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Make a resumed run continue exactly as the uninterrupted one.

    mmengine checkpoints hold the model, optimizer, schedulers and
    counters, but no random state, and its iteration-based loop replays
    every trained batch through the data pipeline on resume. This hook:

    - saves, in every checkpoint (``checkpoint['exact_resume']``), the
      Python / NumPy / torch CPU / every CUDA device's RNG states of every
      rank, and restores each rank's own right before the first batch of
      the resumed run is loaded;
    - starts a :class:`~mmseg_dfq.datasets.DomainMixSampler` at the saved
      position (its batches are a function of their number, and each draw
      carries its augmentation seed, so dataloader workers need no state),
      with ``EpochBasedTrainLoop`` (mid-epoch checkpoints included) and
      with ``IterBasedTrainLoop``, whose catch-up loop then loads nothing;
    - gives the train dataloader its own generator for the per-epoch
      worker base seed, and runs validation between saving and restoring
      the RNG states, so neither opening a dataloader nor validating moves
      the training RNG streams (a resumed run skips both);
    - checks that the dataloader's batch size is the sampler's domain mix.

    Resumed and uninterrupted runs are bitwise equal on CPU with
    ``randomness=dict(seed=..., deterministic=True)``, in one process and
    in distributed runs resumed with the same number of processes. On GPU
    they agree up to kernels that are nondeterministic themselves (e.g.
    the backward of bilinear interpolation and of adaptive average pooling
    use atomic adds). With other samplers the RNG states are restored as
    well; mmengine then replays data (iteration loop) or restarts the
    epoch (epoch loop), and with dataloader workers the augmentation
    randomness is not restored.

    Args:
        restore_rng (bool): Restore the saved RNG states. Default: True.
    """

    # before_train_epoch must run after DistSamplerSeedHook (NORMAL), and
    # after_train_iter/epoch before CheckpointHook (VERY_LOW).
    priority = 'LOW'

    def __init__(self, restore_rng: bool = True) -> None:
        self.restore_rng = restore_rng
        self._loaded = None
        self._pending = False
        self._val_rng = None
        self._gathered = None

    # -- saving -------------------------------------------------------------
    def gather(self) -> None:
        """Collect every rank's RNG states for the next checkpoint.

        A collective: all ranks call it (mmengine runs ``save_checkpoint``
        and its hooks on rank 0 only). ``PreemptionHook`` calls it before
        its own save.
        """
        self._gathered = all_gather_object(get_rng_state())

    @staticmethod
    def _checkpoint_due(runner, at_epoch_end: bool) -> bool:
        """Whether a ``CheckpointHook`` saves at the end of this step."""
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook):
                continue
            if hook.by_epoch != at_epoch_end:
                continue
            if at_epoch_end:
                due = hook.every_n_epochs(
                    runner, hook.interval, hook.save_begin
                ) or (hook.save_last and hook.is_last_train_epoch(runner))
            else:
                due = hook.every_n_train_iters(
                    runner, hook.interval, hook.save_begin
                ) or (hook.save_last and hook.is_last_train_iter(runner))
            if due:
                return True
        return False

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        """In distributed runs, gather RNG states before a checkpoint."""
        if get_dist_info()[1] > 1 and self._checkpoint_due(runner, False):
            self.gather()

    def after_train_epoch(self, runner) -> None:
        """In distributed runs, gather RNG states before a checkpoint."""
        if get_dist_info()[1] > 1 and self._checkpoint_due(runner, True):
            self.gather()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Add the RNG states of every rank and the sampler's shape."""
        world_size = get_dist_info()[1]
        if world_size == 1:
            states = [get_rng_state()]
        elif self._gathered is not None:
            states, self._gathered = self._gathered, None
        else:  # e.g. a best checkpoint saved after validation
            states = [get_rng_state()]
        sampler = domain_mix_sampler(runner.train_dataloader)
        checkpoint[STATE_KEY] = dict(
            version=STATE_VERSION,
            world_size=world_size,
            rng=states,
            sampler=None
            if sampler is None
            else dict(
                epoch_batches=sampler.epoch_batches,
                chunk_size=sampler.chunk_size,
                seed=sampler.seed,
            ),
        )

    # -- loading ------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the saved state until training starts (resume only)."""
        self._loaded = checkpoint.get(STATE_KEY)

    def before_train(self, runner) -> None:
        """Check the batch, detach the dataloader seed, arm the resume."""
        loader = runner.train_dataloader
        sampler = domain_mix_sampler(loader)
        if sampler is not None:
            # With a DomainMixBatchSampler the DataLoader's own batch_size
            # is None: the batch sampler's is the one it checked.
            batch_size = loader.batch_size
            if batch_size is None:
                batch_size = loader.batch_sampler.batch_size
            sampler.check_batch_size(batch_size)
            if sampler.infinite and isinstance(
                runner.train_loop, EpochBasedTrainLoop
            ):
                raise ValueError(
                    'DomainMixSampler(infinite=True) never ends an epoch, '
                    'which EpochBasedTrainLoop needs: set '
                    'train_dataloader.sampler.infinite=False (infinite is '
                    'for IterBasedTrainLoop)'
                )
        if getattr(loader, 'generator', None) is None:
            generator = torch.Generator()
            generator.manual_seed(int(runner.seed) + get_dist_info()[0])
            loader.generator = generator
        # load_from (fine-tuning) also loads a checkpoint, at iteration 0.
        self._pending = runner.iter > 0
        if not self._pending:
            return
        if self._loaded is None:
            print_log(
                'the checkpoint holds no RNG states (not written with '
                'ExactResumeHook): the resumed run will not repeat the '
                'uninterrupted one exactly',
                logger='current',
                level=logging.WARNING,
            )
            return
        rank, world_size = get_dist_info()
        if self._loaded['world_size'] != world_size:
            print_log(
                f'the checkpoint was written by {self._loaded["world_size"]}'
                f' processes, this run has {world_size}: RNG states and '
                'sampler streams are per rank, so the resumed run will '
                'not repeat the uninterrupted one exactly',
                logger='current',
                level=logging.WARNING,
            )
        saved = self._loaded.get('sampler')
        if sampler is not None and saved is not None:
            now = dict(
                epoch_batches=sampler.epoch_batches,
                chunk_size=sampler.chunk_size,
                seed=sampler.seed,
            )
            if now != saved:
                print_log(
                    f'DomainMixSampler was {saved} when the checkpoint was '
                    f'written and is {now} now (data or seed changed): '
                    'the resumed run will not repeat the uninterrupted one',
                    logger='current',
                    level=logging.WARNING,
                )

    def _restore(self, runner) -> None:
        if not self.restore_rng or self._loaded is None:
            return
        states = self._loaded['rng']
        rank = get_dist_info()[0]
        if rank < len(states):
            set_rng_state(states[rank])
        else:
            print_log(
                f'the checkpoint holds no RNG state of rank {rank}; its '
                'random streams start afresh',
                logger='current',
                level=logging.WARNING,
            )

    def before_train_epoch(self, runner) -> None:
        """Start the first epoch after a resume at the saved position."""
        if not self._pending:
            return
        self._pending = False
        loop = runner.train_loop
        sampler = domain_mix_sampler(runner.train_dataloader)
        position = runner.iter
        if isinstance(loop, IterBasedTrainLoop):
            free = sampler is not None
            iterator = loop.dataloader_iterator
            if free:
                epoch, skip = divmod(position, sampler.epoch_batches)
                sampler.set_epoch(epoch)
                sampler.skip_batches(skip)
                # The loop opened its iterator when it was built, before
                # the checkpoint was loaded: open it again from the
                # position (persistent workers are reset by the
                # DataLoader; others end with the old iterator).
                iterator = _InfiniteDataloaderIterator(loop.dataloader)
                iterator._epoch = epoch
            loop.dataloader_iterator = _ResumedIterator(
                iterator,
                skips=position,
                free=free,
                on_first_fetch=lambda: self._restore(runner),
            )
            if free:
                print_log(
                    f'DomainMixSampler starts at batch {position}: '
                    'the catch-up below loads no data',
                    logger='current',
                )
            return
        if sampler is not None:
            skip = position - runner.epoch * sampler.epoch_batches
            if not 0 <= skip <= sampler.epoch_batches:
                print_log(
                    f'iteration {position} is not in epoch {runner.epoch} '
                    f'of {sampler.epoch_batches} batches; starting the '
                    'epoch from its first batch',
                    logger='current',
                    level=logging.WARNING,
                )
                skip = 0
            sampler.skip_batches(skip)
        self._restore(runner)

    # -- validation leaves the training RNG streams alone ---------------------
    def before_val(self, runner) -> None:
        """Remember the RNG states before validating."""
        self._val_rng = get_rng_state()

    def after_val(self, runner) -> None:
        """Put the RNG states back as they were before validating."""
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None
