"""A test loop in which one failing case does not stop the evaluation."""

import logging

from mmengine.logging import print_log
from mmengine.runner import TestLoop
from mmseg.registry import LOOPS

from .nonfinite_hook import batch_files


@LOOPS.register_module()
class TolerantTestLoop(TestLoop):
    """mmengine's ``TestLoop`` that reports a failing batch and goes on.

    An exception while testing one batch (e.g. a volume whose slices are
    smaller than the network accepts) is logged with the batch's image
    files; the batch is left out and the loop continues. The metrics cover
    the cases that were tested; :attr:`failures` lists the others (a 3D
    case with some failed slices is reassembled from the rest).
    ``tools/test.py`` uses this loop and exits with status 1 when any
    batch failed.

    Args:
        runner (Runner): The runner.
        dataloader (DataLoader | dict): The test dataloader.
        evaluator (Evaluator | dict | list): The evaluator.
        fp16 (bool): Test in half precision. Default: False.
    """

    def __init__(self, runner, dataloader, evaluator, fp16=False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        self.failures = []

    def run_iter(self, idx, data_batch) -> None:
        """Test one batch; on an error log it with the batch's files."""
        try:
            super().run_iter(idx, data_batch)
        except Exception as err:  # noqa: BLE001 - reported, then skipped
            files = batch_files(data_batch)
            detail = str(err).splitlines()[0] if str(err) else ''
            self.failures.append((files, f'{type(err).__name__}: {detail}'))
            print_log(
                f'error: test batch {idx} ({", ".join(files)}) failed and '
                f'is left out: {type(err).__name__}: {detail}',
                logger='current',
                level=logging.ERROR,
            )
