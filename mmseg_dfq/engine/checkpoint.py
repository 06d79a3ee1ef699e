"""Pick the checkpoint that ``--resume`` continues from."""

import glob
import logging
import os
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.logging import print_log

from ..compat import CheckpointError, load_checkpoint_file


def _candidates(work_dir: str) -> List[str]:
    """Checkpoints of ``work_dir``, the most recent first.

    The one named by ``last_checkpoint`` comes first when it exists; the
    others follow by modification time. ``best_*.pth`` files (a model
    picked on validation) are not training states to continue from.
    """
    found = [
        p
        for p in glob.glob(osp.join(work_dir, '*.pth'))
        if not osp.basename(p).startswith('best_')
    ]
    found.sort(key=osp.getmtime, reverse=True)
    named = None
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(last):
        with open(last) as f:
            named = f.read().strip()
    if named and osp.isfile(named):
        found = [named] + [
            p for p in found if osp.abspath(p) != osp.abspath(named)
        ]
    return found


def find_resumable_checkpoint(
    work_dir: str,
) -> Tuple[Optional[str], List[str]]:
    """The newest checkpoint of ``work_dir`` that loads.

    mmengine's auto-resume takes the file that ``last_checkpoint`` names
    and fails with a traceback when it is unreadable. This walks the
    checkpoints from the newest back and returns the first one that
    ``torch.load`` reads, warning about each unreadable one on the way.

    Args:
        work_dir (str): The run's work folder.

    Returns:
        tuple[str | None, list[str]]: The checkpoint to resume from (None
        when there is none) and the unreadable ones that were passed over.
    """
    if not osp.isdir(work_dir):
        return None, []
    broken = []
    for path in _candidates(work_dir):
        try:
            load_checkpoint_file(path, map_location='cpu')
        except (CheckpointError, RuntimeError) as err:
            print_log(
                f'Not resuming from {path}: {err}. Trying the previous '
                'checkpoint.',
                logger='current',
                level=logging.WARNING,
            )
            broken.append(path)
            continue
        return path, broken
    return None, broken


def remove_stale_temp_files(work_dir: str) -> List[str]:
    """Delete temporary files of checkpoint writes that were cut short.

    :func:`mmseg_dfq.compat.atomic_write` names them
    ``.<name>.tmp-<pid>``; one whose process no longer runs is left over
    from a killed run (the checkpoint it was writing never got its name).

    Args:
        work_dir (str): The run's work folder.

    Returns:
        list[str]: The files removed.
    """
    removed = []
    for path in glob.glob(osp.join(work_dir, '.*.tmp-*')):
        try:
            pid = int(path.rsplit('.tmp-', 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os.remove(path)
            removed.append(path)
        except PermissionError:  # a live process of another user
            continue
    return removed
