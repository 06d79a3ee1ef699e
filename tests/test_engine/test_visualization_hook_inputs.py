"""DomainVisualizationHook: TTA batches, test runs, and drawing off."""

import types

import torch
from mmengine.runner import BaseLoop
from mmengine.structures import BaseDataElement

from mmseg_dfq.engine import DomainVisualizationHook


def _views(flips):
    """A TestTimeAug batch of two samples: one tuple per view."""
    inputs, samples = [], []
    for view, flip in enumerate(flips):
        inputs.append(
            tuple(torch.full((3, 4, 4), 10 * view + i) for i in range(2))
        )
        samples.append(
            tuple(BaseDataElement(metainfo=dict(flip=flip)) for _ in range(2))
        )
    return dict(inputs=inputs, data_samples=samples)


def test_sample_input_of_tta_batches_is_the_unflipped_view():
    pick = DomainVisualizationHook._sample_input
    batch = _views([False, True])
    assert torch.equal(pick(batch, 1), batch['inputs'][0][1])
    # Whichever position the unflipped view has.
    batch = _views([True, False])
    assert torch.equal(pick(batch, 0), batch['inputs'][1][0])
    assert torch.equal(pick(batch, 1), batch['inputs'][1][1])
    # A batch of one view: a list of (C, H, W) or a (B, C, H, W) tensor.
    plain = [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]
    assert torch.equal(pick(dict(inputs=plain), 1), plain[1])
    stacked = torch.stack(plain)
    assert torch.equal(pick(dict(inputs=stacked), 1), plain[1])


class _Runner:
    """``iter`` as mmengine's Runner has it: it builds the training loop."""

    def __init__(self, train_loop):
        self._train_loop = train_loop

    @property
    def iter(self):
        raise AssertionError('runner.iter built the training loop')


class _Loop(BaseLoop):
    def __init__(self, iteration):
        self._iter = iteration

    @property
    def iter(self):
        return self._iter

    def run(self):
        pass


def test_step_of_a_test_run_does_not_build_the_training_loop():
    step = DomainVisualizationHook._step
    # Not built (a config dict) or none: step 0, as runner.iter would give.
    assert step(_Runner(dict(type='IterBasedTrainLoop'))) == 0
    assert step(_Runner(None)) == 0
    # Built (validation during training): its iteration.
    assert step(_Runner(_Loop(7))) == 7
    # Any other runner: its iter.
    assert step(types.SimpleNamespace(iter=5)) == 5


def test_nothing_is_done_when_not_drawing(tmp_path):
    """As mmseg's SegVisualizationHook: draw=False (the configs' default,
    e.g. validation during training) reads and paints nothing."""
    from mmseg.visualization import SegLocalVisualizer

    SegLocalVisualizer.get_instance(
        'test_hook_not_drawing', save_dir=str(tmp_path / 'show')
    )
    hook = DomainVisualizationHook()
    assert hook.draw is False and hook.interval == 50
    sample = BaseDataElement(
        metainfo=dict(img_path=str(tmp_path / 'missing.png'), case_id='x')
    )
    runner = _Runner(None)
    for idx in range(100):
        hook.after_test_iter(runner, idx, dict(inputs=[None]), [sample])
        hook.after_val_iter(runner, idx, dict(inputs=[None]), [sample])
    hook.after_test_epoch(runner)
    assert hook._writer is None
    assert not list(tmp_path.iterdir())
