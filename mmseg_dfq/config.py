"""Config loading shared by the command-line tools."""

import os.path as osp

from mmengine.config import Config

from .compat import adapt_cfg_to_device
from .datasets.samplers import check_domain_mix_batch_size


def load_config(path, cfg_options=None, launcher='none', work_dir=None):
    """Read a config, apply CLI overrides and make it runnable on this host.

    Args:
        path (str): Config file.
        cfg_options (dict, optional): ``--cfg-options`` overrides.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'. Default: 'none'.
        work_dir (str, optional): Overrides the config's ``work_dir``; when
            neither is set, ``./work_dirs/<config name>``.

    Raises:
        FileNotFoundError: If the config file does not exist.
        ValueError: If the train batch size is not the sum of a
            ``DomainMixSampler``'s per-domain counts.

    Returns:
        mmengine.Config: The config (adapted by
        :func:`mmseg_dfq.compat.adapt_cfg_to_device`).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join(
            './work_dirs', osp.splitext(osp.basename(path))[0]
        )
    if cfg.get('train_dataloader'):
        # A batch size other than the sum of the per-domain counts would
        # silently break the mix: stop here instead.
        check_domain_mix_batch_size(cfg.train_dataloader)
    return adapt_cfg_to_device(cfg)
