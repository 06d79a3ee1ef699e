"""A test loop in which one failing case does not stop the evaluation."""

import logging
import re
from typing import List, Optional

import torch
from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.runner import TestLoop
from mmengine.runner.amp import autocast
from mmengine.runner.loops import _parse_losses, _update_losses
from mmseg.registry import LOOPS

from .nonfinite_hook import batch_files

_EXCEPTION_LINE = re.compile(r'^([\w.]+): (.*)$')


def error_text(err: BaseException) -> str:
    """``'<Type>: <first line of the message>'`` of an exception.

    An exception that a DataLoader worker raised reaches the main process
    re-raised with the worker's whole traceback as its message (``Caught
    ValueError in DataLoader worker process 0. Original Traceback ...``);
    its own message, which our loaders make name the file, is then the
    traceback's last ``<Type>: ...`` line.

    Args:
        err (BaseException): The exception.

    Returns:
        str: The type and the first line of the (original) message.
    """
    name = type(err).__name__
    text = str(err)
    if 'Original Traceback' in text:
        for line in reversed(text.splitlines()):
            match = _EXCEPTION_LINE.match(line)
            if match and match.group(1).split('.')[-1] == name:
                text = match.group(2)
                break
    lines = text.strip().splitlines()
    return f'{name}: {lines[0]}' if lines else name


@LOOPS.register_module()
class TolerantTestLoop(TestLoop):
    """mmengine's ``TestLoop`` that reports a failing batch and goes on.

    A batch fails when it cannot be loaded (the DataLoader raises while
    fetching it, e.g. an unreadable image: our loaders name the file in the
    error) or tested (the model's test step or the evaluator's ``process``
    raises, e.g. a volume whose slices are smaller than the network
    accepts). It is logged with its image files (where the error names
    them, for a batch that could not be loaded), left out of the metrics
    (the evaluator keeps nothing of it) and listed in :attr:`failures`; the
    loop goes on with the next batch, in the main process or the
    DataLoader's workers alike. The metrics cover the cases that were
    tested; a 3D case missing a slice stops ``DomainMetric``, which refuses
    an incomplete volume (a volume is read whole, so its slices fail
    together). ``tools/test.py`` uses this loop and exits with status 1
    when any batch failed. In a distributed test a failing batch is an
    error instead (the ranks' results are gathered by position).

    An error of an ``after_test_iter`` hook (e.g. the visualisation hook)
    comes after the batch was evaluated: it is logged as that hook's
    failure, the batch stays in the metrics, the other hooks still run, and
    it is listed in :attr:`hook_failures`.

    Args:
        runner (Runner): The runner.
        dataloader (DataLoader | dict): The test dataloader.
        evaluator (Evaluator | dict | list): The evaluator.
        fp16 (bool): Test in half precision. Default: False.

    Attributes:
        failures (list[tuple[list[str], str]]): Batches left out of the
            metrics: their files and the error.
        hook_failures (list[tuple[str, list[str], str]]): Hook errors after
            a tested batch: the hook, the batch's files and the error.
    """

    def __init__(self, runner, dataloader, evaluator, fp16=False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        self.failures = []
        self.hook_failures = []
        self._paths = None

    def run(self) -> dict:
        """Test every batch that loads, evaluate, and return the metrics.

        mmengine's ``TestLoop.run``, but a batch that cannot be loaded is
        reported and skipped.
        """
        self.runner.call_hook('before_test')
        self.runner.call_hook('before_test_epoch')
        self.runner.model.eval()

        self.test_loss.clear()
        for idx, data_batch in self._batches():
            self.run_iter(idx, data_batch)

        metrics = self.evaluator.evaluate(len(self.dataloader.dataset))
        if self.test_loss:
            metrics.update(_parse_losses(self.test_loss, 'test'))
        self.runner.call_hook('after_test_epoch', metrics=metrics)
        self.runner.call_hook('after_test')
        return metrics

    def _batches(self):
        """Yield ``(index, batch)``; report a batch that fails to load.

        torch's DataLoader iterators move on after an error of one batch
        (the single-process one has taken the batch's indices; with
        workers, the failed batch counts as received). An error after which
        the iterator cannot go on (a worker died, a timeout) is raised.
        """
        iterator = iter(self.dataloader)
        try:
            num_batches = len(self.dataloader)
        except TypeError:
            num_batches = None
        idx = 0
        while True:
            received = getattr(iterator, '_rcvd_idx', None)
            try:
                data_batch = next(iterator)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - reported, then skipped
                stuck = received is not None and (
                    getattr(iterator, '_rcvd_idx', None) == received
                )
                if stuck or (num_batches is not None and idx >= num_batches):
                    raise
                files = self._files_named(str(err)) or [
                    f'<test batch {idx}: files not known>'
                ]
                self._left_out(idx, files, err, 'could not be loaded')
                idx += 1
                continue
            yield idx, data_batch
            idx += 1

    @torch.no_grad()
    def run_iter(self, idx, data_batch) -> None:
        """Test one batch; on an error log it with the batch's files.

        Until the evaluator has processed the batch an error leaves the
        batch out (what the evaluator kept of it is dropped); an error of an
        ``after_test_iter`` hook does not.
        """
        metrics = getattr(self.evaluator, 'metrics', [])
        kept = [len(metric.results) for metric in metrics]
        try:
            self.runner.call_hook(
                'before_test_iter', batch_idx=idx, data_batch=data_batch
            )
            with autocast(enabled=self.fp16):
                outputs = self.runner.model.test_step(data_batch)
            outputs, self.test_loss = _update_losses(outputs, self.test_loss)
            self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        except Exception as err:  # noqa: BLE001 - reported, then skipped
            for metric, n in zip(metrics, kept):
                del metric.results[n:]
            self._left_out(idx, batch_files(data_batch), err, 'failed')
            return
        self._after_iter_hooks(idx, data_batch, outputs)

    def _after_iter_hooks(self, idx, data_batch, outputs) -> None:
        """``runner.call_hook('after_test_iter')``, each hook on its own."""
        for hook in self.runner.hooks:
            method = getattr(hook, 'after_test_iter', None)
            if method is None:
                continue
            try:
                method(
                    self.runner,
                    batch_idx=idx,
                    data_batch=data_batch,
                    outputs=outputs,
                )
            except Exception as err:  # noqa: BLE001 - reported, kept
                files = batch_files(data_batch)
                name = type(hook).__name__
                detail = error_text(err)
                self.hook_failures.append((name, files, detail))
                print_log(
                    f'error: {name} failed after test batch {idx} '
                    f'({", ".join(files)}), which was tested and is in the '
                    f'metrics: {detail}',
                    logger='current',
                    level=logging.ERROR,
                )

    def _left_out(
        self, idx: int, files: List[str], err: BaseException, what: str
    ) -> None:
        """Record and log a batch left out of the metrics.

        In a distributed test the error is raised instead: mmengine
        gathers the ranks' results by position, so a rank with one batch
        less would shift the others' samples (the metric would then see a
        padding duplicate in place of a case).
        """
        detail = error_text(err)
        if get_world_size() > 1:
            raise RuntimeError(
                f'test batch {idx} ({", ".join(files)}) {what}: {detail} '
                '(a distributed test cannot leave a batch out; test on one '
                'process to go on past it)'
            ) from err
        self.failures.append((files, detail))
        print_log(
            f'error: test batch {idx} ({", ".join(files)}) {what} and is '
            f'left out: {detail}',
            logger='current',
            level=logging.ERROR,
        )

    def _files_named(self, text: str) -> Optional[List[str]]:
        """The dataset's image / mask files that ``text`` names."""
        if self._paths is None:
            self._paths = self._dataset_paths()
        return [path for path in self._paths if path in text] or None

    def _dataset_paths(self) -> List[str]:
        """Every image / mask file of the test set, once (in order)."""
        dataset = self.dataloader.dataset
        get_info = getattr(dataset, 'get_data_info', None)
        paths = {}
        if get_info is None:
            return []
        try:
            for i in range(len(dataset)):
                info = get_info(i)
                for key in ('img_path', 'seg_map_path'):
                    if info.get(key):
                        paths[str(info[key])] = None
        except Exception:  # noqa: BLE001 - the message says it anyway
            return []
        return list(paths)
