"""The one place that papers over the OpenMMLab stack on current machines.

Four gaps are closed here, and nowhere else:

1. **No compiled mmcv ops** (``mmcv-lite``): a few mmseg modules import
   ``mmcv.ops`` unconditionally, so ``import mmseg.models`` fails.
   :func:`install_mmcv_ops_fallback` registers a small ``mmcv.ops`` module with
   pure-PyTorch versions of the symbols mmseg needs at import time
   (``point_sample``, ``sigmoid_focal_loss``); any other op raises a
   ``ModuleNotFoundError`` naming it. Inactive when ``mmcv._ext`` exists.
2. **Safe checkpoints under torch >= 2.6**: ``torch.load`` defaults to
   ``weights_only=True`` and mmengine 0.10 checkpoints hold a few non-tensor
   types. :func:`allow_mmengine_checkpoints` allowlists exactly those types;
   a checkpoint whose pickle calls anything else (``os.system``...) is still
   refused by torch, and :func:`explain_unsafe_checkpoint` turns that refusal
   into a clear error. Checkpoints that cannot be read at all (cut short
   by a full disk or a dying node) raise :class:`CheckpointError` naming the
   file. Checkpoints and mmengine's ``last_checkpoint`` are written
   atomically (:func:`atomic_write`): mmengine 0.10 writes both in place,
   so a run killed mid-write left a truncated latest checkpoint.
3. **Distributed without CUDA**: mmengine's ``pytorch``/``slurm`` launchers
   call ``torch.cuda.set_device``. :func:`setup_distributed` initialises a
   ``gloo`` process group on CPU-only hosts before the Runner is built (the
   Runner then skips its own init) and :func:`adapt_cfg_to_device` makes the
   config runnable there (``SyncBN`` -> ``BN``, DDP without device ids). On
   GPU hosts nothing changes.
4. **FLOPs of fused attention**: mmengine's FLOP counter
   (``mmengine.analysis``, behind mmseg's ``get_flops.py``) has no handle
   for ``aten::scaled_dot_product_attention`` and counts it as zero, so a
   model whose attention runs fused (the DFQ models by default) came out
   ~10% short of the same model with the explicit matmuls.
   :func:`register_attention_flop_handle` adds a handle that counts what
   mmengine counts for the explicit form.
"""

import importlib.util
import io
import os
import subprocess
import sys
import types

import torch
import torch.nn.functional as F

__all__ = [
    'install_mmcv_ops_fallback',
    'allow_mmengine_checkpoints',
    'explain_unsafe_checkpoint',
    'CheckpointError',
    'atomic_write',
    'load_checkpoint_file',
    'setup_distributed',
    'teardown_distributed',
    'adapt_cfg_to_device',
    'attention_flop_jit',
    'register_attention_flop_handle',
    'HAS_COMPILED_MMCV_OPS',
]

HAS_COMPILED_MMCV_OPS = importlib.util.find_spec('mmcv._ext') is not None


# --------------------------------------------------------------------------
# 1. mmcv.ops without compiled extensions
# --------------------------------------------------------------------------
def _point_sample(input, points, align_corners=False, **kwargs):
    """Sample ``input`` at normalised points, as ``mmcv.ops.point_sample``.

    Args:
        input (Tensor): Feature map, shape (N, C, H, W).
        points (Tensor): Points in [0, 1] x [0, 1], shape (N, P, 2) or
            (N, Hg, Wg, 2).
        align_corners (bool): Passed to ``grid_sample``. Default: False.

    Returns:
        Tensor: Shape (N, C, P) or (N, C, Hg, Wg).
    """
    squeeze = points.dim() == 3
    if squeeze:
        points = points.unsqueeze(2)
    out = F.grid_sample(
        input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs
    )
    return out.squeeze(3) if squeeze else out


def _sigmoid_focal_loss(
    input, target, gamma=2.0, alpha=0.25, weight=None, reduction='mean'
):
    """Pure-PyTorch ``mmcv.ops.sigmoid_focal_loss``.

    Args:
        input (Tensor): Logits, shape (N, C).
        target (Tensor): Class indices, shape (N,); an index outside
            [0, C) makes every class a negative, as in mmcv's kernel.
        gamma (float): Focusing parameter. Default: 2.0.
        alpha (float): Weight of positives. Default: 0.25.
        weight (Tensor, optional): Per-sample weight, shape (N,).
        reduction (str): 'none', 'mean' or 'sum'. Default: 'mean'.

    Returns:
        Tensor: The loss, shape (N, C) for 'none', else a scalar.
    """
    num_classes = input.size(1)
    valid = (target >= 0) & (target < num_classes)
    onehot = torch.zeros_like(input)
    rows = torch.nonzero(valid, as_tuple=True)[0]
    onehot[rows, target[valid].long()] = 1.0
    prob = input.sigmoid()
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    loss = (
        F.binary_cross_entropy_with_logits(input, onehot, reduction='none')
        * alpha_t
        * (1 - p_t).pow(gamma)
    )
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    if reduction == 'mean':
        return loss.sum() / input.size(0)
    if reduction == 'sum':
        return loss.sum()
    return loss


_FALLBACK_OPS = {
    'point_sample': _point_sample,
    'sigmoid_focal_loss': _sigmoid_focal_loss,
}


def _missing_op(name):
    if name.startswith('_'):
        # Module machinery (inspect, pickle, doctest) probes dunder names with
        # hasattr, which expects AttributeError.
        raise AttributeError(f"module 'mmcv.ops' has no attribute {name!r}")
    raise ModuleNotFoundError(
        f'mmcv.ops.{name} needs mmcv compiled with its ops; this environment '
        'has mmcv-lite (no mmcv._ext). mmseg-dfq provides pure-PyTorch '
        f'versions of {sorted(_FALLBACK_OPS)} only. Install a full mmcv '
        '(2.0.x/2.1.x built for your torch) to use this op.',
        name=f'mmcv.ops.{name}',
    )


def install_mmcv_ops_fallback():
    """Register the pure-PyTorch ``mmcv.ops`` when compiled ops are missing.

    Returns:
        bool: True if the fallback is (now) active, False when mmcv's compiled
        ops are present and nothing was changed.
    """
    if HAS_COMPILED_MMCV_OPS:
        return False
    existing = sys.modules.get('mmcv.ops')
    if getattr(existing, '__mmseg_dfq_fallback__', False):
        return True
    import mmcv

    module = types.ModuleType(
        'mmcv.ops',
        'Pure-PyTorch stand-ins installed by mmseg_dfq.compat '
        '(mmcv._ext is missing).',
    )
    module.__mmseg_dfq_fallback__ = True
    module.__all__ = list(_FALLBACK_OPS)
    module.__dict__.update(_FALLBACK_OPS)
    module.__getattr__ = _missing_op
    sys.modules['mmcv.ops'] = module
    mmcv.ops = module
    return True


# --------------------------------------------------------------------------
# 2. Safe loading of mmengine checkpoints with weights_only=True
# --------------------------------------------------------------------------
_HISTORY_BUFFER_METHODS = ('mean', 'current', 'max', 'min', 'data')


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` inside checkpoint pickles.

    mmengine's ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``. The real ``getattr`` would let a
    pickle reach any attribute of any allowlisted object, so only those named
    methods of ``HistoryBuffer`` resolve.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise torch.serialization.pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only '
        f'HistoryBuffer.{_HISTORY_BUFFER_METHODS} are allowed'
    )


def _numpy_safe_globals():
    import numpy as np

    safe = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    safe += [_reconstruct, scalar]
    # numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.*).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        safe += [
            getattr(dtypes, name)
            for name in dir(dtypes)
            if name.endswith('DType')
        ]
    # Old numpy spells its module numpy.core.multiarray in pickles.
    safe += [
        (_reconstruct, 'numpy.core.multiarray._reconstruct'),
        (scalar, 'numpy.core.multiarray.scalar'),
    ]
    return safe


def allow_mmengine_checkpoints():
    """Allowlist the non-tensor types that mmengine checkpoints contain.

    Returns:
        bool: True if an allowlist was registered; False on torch versions
        without ``weights_only`` allowlists (< 2.4), which need none.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return False
    import codecs
    from collections import OrderedDict, defaultdict

    from mmengine.logging.history_buffer import HistoryBuffer

    add(
        [
            HistoryBuffer,
            codecs.encode,
            OrderedDict,
            defaultdict,
            (_history_buffer_getattr, 'builtins.getattr'),
            (_history_buffer_getattr, '__builtin__.getattr'),
            *_numpy_safe_globals(),
        ]
    )
    return True


def explain_unsafe_checkpoint(filename, error):
    """Turn torch's weights-only refusal into an error naming the file.

    Args:
        filename (str): The checkpoint that was being loaded.
        error (Exception): What ``torch.load`` raised.

    Returns:
        RuntimeError: The error to raise.
    """
    return RuntimeError(
        f'Refusing to load checkpoint {filename!r}: its pickle references an '
        'object outside the allowlist of types that mmengine checkpoints '
        'contain, so loading it could run arbitrary code. If you trust the '
        'file and it holds extra types, add exactly those with '
        f'torch.serialization.add_safe_globals. Details: {error}'
    )


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded; the message names it."""


def _is_weights_only_refusal(error):
    return 'weights only load failed' in str(error).lower()


def load_checkpoint_file(filename, map_location=None):
    """``torch.load`` a local checkpoint; one clear error when it fails.

    Args:
        filename (str): Checkpoint path.
        map_location (str | callable, optional): As for ``torch.load``.

    Returns:
        dict: The checkpoint.

    Raises:
        FileNotFoundError: If the file does not exist.
        RuntimeError: If its pickle references objects outside the allowlist
            (see :func:`explain_unsafe_checkpoint`).
        CheckpointError: If the file is not a readable checkpoint (empty,
            truncated, corrupt).
    """
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    try:
        # weights_only is left at torch's default (True for torch >= 2.6).
        return torch.load(filename, map_location=map_location)
    except torch.serialization.pickle.UnpicklingError as err:
        if _is_weights_only_refusal(err):
            raise explain_unsafe_checkpoint(filename, err) from err
        raise _unreadable(filename, err) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise _unreadable(filename, err) from err


def _unreadable(filename, err):
    size = os.path.getsize(filename)
    detail = (str(err) or type(err).__name__).splitlines()[0]
    return CheckpointError(
        f'checkpoint {filename!r} ({size} bytes) cannot be read: it is '
        'truncated or corrupt (a run killed while writing it, a full disk, '
        f'an incomplete copy). torch says: {detail}'
    )


def load_from_local(filename, map_location=None):
    """mmengine's local checkpoint loader, naming the file on failure.

    The name follows mmengine's ``load_from_<backend>`` convention:
    ``CheckpointLoader`` logs ``Loads checkpoint by <name[10:]> backend``,
    here "local".
    """
    return load_checkpoint_file(filename, map_location=map_location)


def _with_fetch_advice(loader):
    """Wrap an mmengine URL loader so a failed download says what to do."""

    def load(filename, map_location=None, **kwargs):
        try:
            return loader(filename, map_location=map_location, **kwargs)
        except torch.serialization.pickle.UnpicklingError as err:
            raise explain_unsafe_checkpoint(filename, err) from err
        except OSError as err:  # URLError, HTTPError, socket errors
            raise RuntimeError(
                f'Could not fetch the checkpoint {filename!r} ({err}). '
                'Download it on a machine with internet access and point '
                'the config at the local file (e.g. --cfg-options '
                'model.backbone.init_cfg.checkpoint=/path/to/weights.pth), '
                'or train without pretrained weights with --cfg-options '
                'model.backbone.init_cfg=None model.pretrained=None (both: '
                "mmseg turns a config's model.pretrained back into the "
                "backbone's init_cfg; expect lower accuracy, and a frozen "
                'backbone then stays random).'
            ) from err

    load.__doc__ = f'{loader.__name__}, with advice when it cannot fetch.'
    # CheckpointLoader logs the backend as the loader's name[10:] ("http").
    load.__name__ = load.__qualname__ = loader.__name__
    return load


def atomic_write(path, data):
    """Write a file so that it holds either its old or its new content.

    The bytes go to a temporary file in the same folder, are flushed and
    fsync'ed, and the temporary file is renamed over ``path`` (atomic on
    POSIX file systems); the folder is fsync'ed so the rename survives a
    crash. A process killed at any moment leaves at worst a stray
    ``.<name>.tmp-<pid>`` file, never a truncated ``path``.

    Args:
        path (str): Destination.
        data (bytes | str): Content; ``str`` is written as UTF-8.
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            _write_and_sync(f, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_and_sync(f, data):
    """Write ``data`` to the open file ``f`` and force it to the disk."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


class _AtomicTextFile(io.StringIO):
    """A text file opened for writing that lands atomically on close."""

    def __init__(self, path, encoding):
        super().__init__()
        self._path = path
        self._encoding = encoding or 'utf-8'

    def close(self):
        if not self.closed:
            atomic_write(self._path, self.getvalue().encode(self._encoding))
        super().close()


def _open_last_checkpoint(file, mode='r', *args, **kwargs):
    """``open`` for mmengine's CheckpointHook: atomic text writes."""
    if mode in ('w', 'wt'):
        return _AtomicTextFile(file, kwargs.get('encoding'))
    return open(file, mode, *args, **kwargs)


def _register_atomic_writes():
    """Write checkpoints and ``last_checkpoint`` atomically.

    mmengine saves a checkpoint through its file backend's ``put``
    (``LocalBackend`` writes in place) and ``CheckpointHook`` writes
    ``last_checkpoint`` with a plain ``open(..., 'w')``. The local backend
    is replaced by one whose ``put`` / ``put_text`` use
    :func:`atomic_write`, and the ``open`` seen by mmengine's checkpoint
    hook module (only there) by one whose text writes are atomic.
    """
    from mmengine.fileio.backends import LocalBackend, register_backend
    from mmengine.hooks import checkpoint_hook

    class AtomicLocalBackend(LocalBackend):
        """mmengine's local backend with atomic ``put``/``put_text``."""

        def put(self, obj, filepath):
            atomic_write(str(filepath), obj)

        def put_text(self, obj, filepath, encoding='utf-8'):
            atomic_write(str(filepath), obj.encode(encoding))

    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    checkpoint_hook.open = _open_last_checkpoint


def _register_checkpoint_loader():
    """Route mmengine's local and URL checkpoint loading through ours."""
    from mmengine.runner import checkpoint as ckpt

    ckpt.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True
    )
    for prefixes, loader in (
        (('http://', 'https://'), ckpt.load_from_http),
        (('open-mmlab://', 'openmmlab://'), ckpt.load_from_openmmlab),
    ):
        ckpt.CheckpointLoader.register_scheme(
            prefixes=prefixes, loader=_with_fetch_advice(loader), force=True
        )


# --------------------------------------------------------------------------
# 3. Distributed runs on CPU-only hosts
# --------------------------------------------------------------------------
def _slurm_env():
    """Fill torch.distributed's env variables from slurm's."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        nodes = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {nodes} | head -n1'
        )
    os.environ.setdefault('MASTER_PORT', '29500')


def setup_distributed(launcher):
    """Initialise a gloo process group for CPU-only distributed runs.

    On hosts with CUDA this does nothing and mmengine's Runner initialises
    NCCL as usual.

    Args:
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.

    Returns:
        bool: True if this function initialised the process group.
    """
    import torch.distributed as dist

    if launcher == 'none' or torch.cuda.is_available():
        return False
    if not dist.is_available():
        raise RuntimeError('this torch build has no torch.distributed')
    if dist.is_initialized():
        return False
    if launcher == 'slurm':
        _slurm_env()
    elif launcher == 'mpi':
        os.environ.setdefault('RANK', os.environ['OMPI_COMM_WORLD_RANK'])
        os.environ.setdefault('WORLD_SIZE', os.environ['OMPI_COMM_WORLD_SIZE'])
        os.environ.setdefault(
            'LOCAL_RANK', os.environ['OMPI_COMM_WORLD_LOCAL_RANK']
        )
    missing = [
        k
        for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
        if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f'--launcher {launcher} needs the environment variables '
            f'{missing}; start the script with torchrun (or srun/mpirun)'
        )
    dist.init_process_group(backend='gloo', init_method='env://')
    return True


def teardown_distributed():
    """Destroy the default process group, if any, before the process exits.

    Leaving a gloo group to the interpreter's shutdown made a torchrun worker
    abort now and then ('terminate called without an active exception')
    after its work was done, failing the whole run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def iter_config_dicts(node):
    """Every dict of a config tree (dicts, lists and tuples), parents first.

    Args:
        node: A config value, e.g. ``cfg.model``.

    Yields:
        dict: Each dict found, ``node`` itself included.
    """
    if isinstance(node, dict):
        yield node
        values = node.values()
    elif isinstance(node, (list, tuple)):
        values = node
    else:
        return
    for value in values:
        yield from iter_config_dicts(value)


def _replace_sync_bn(node):
    for entry in iter_config_dicts(node):
        if entry.get('type') == 'SyncBN':
            entry['type'] = 'BN'


def adapt_cfg_to_device(cfg):
    """Make a GPU-minded config run on a CPU-only host, in place.

    ``SyncBN`` becomes ``BN`` (torch's SyncBatchNorm needs GPUs), distributed
    runs use gloo and wrap the model in DDP without device ids. Configs are
    left untouched when CUDA is available.

    Args:
        cfg (mmengine.Config): The config to adapt.

    Returns:
        mmengine.Config: ``cfg``.
    """
    if torch.cuda.is_available():
        return cfg
    _replace_sync_bn(cfg.model)
    if cfg.get('launcher', 'none') != 'none':
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'
        wrapper = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel'
        )
        wrapper['device_ids'] = None
        wrapper.setdefault('broadcast_buffers', False)
        cfg.model_wrapper_cfg = wrapper
    return cfg


# --------------------------------------------------------------------------
# 4. FLOP counting of torch's fused attention
# --------------------------------------------------------------------------
def attention_flop_jit(inputs, outputs):
    """FLOPs of ``aten::scaled_dot_product_attention``, mmengine's way.

    mmengine (after fvcore) counts one flop per multiply-add of a matrix
    product and nothing for the softmax, the scaling or a mask. The
    explicit attention ``softmax(q k^T * scale) v`` is two products: the
    scores (``... x Lq x D`` times ``... x D x Lk``) and their product with
    the values (``... x Lq x Lk`` times ``... x Lk x Dv``), together
    ``prod(batch dims) * Lq * Lk * (D + Dv)``, which is what this returns.
    The batch dimensions (heads included) are the output's, so broadcast
    and grouped-query keys count as the products on expanded keys would.

    Args:
        inputs (list[torch._C.Value]): Query, key, value, then the
            optional arguments.
        outputs (list[torch._C.Value]): The attention output.

    Returns:
        int: The flop count; 0 when the trace has no shapes for them.
    """
    from mmengine.analysis.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    out = get_shape(outputs[0])
    if None in (q, k, v, out):  # shapes unknown to the trace
        return 0
    batch = 1
    for size in out[:-2]:
        batch *= size
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def register_attention_flop_handle():
    """Count fused attention in mmengine's default FLOP-handle table.

    ``FlopAnalyzer`` (and so ``get_model_complexity_info`` and mmseg's
    ``tools/analysis_tools/get_flops.py``) starts from
    ``mmengine.analysis.complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS``.
    That table has handles for ``aten::bmm`` / ``aten::matmul`` (the
    explicit attention of MiT's ``nn.MultiheadAttention`` and of the DFQ
    head) but none for ``aten::scaled_dot_product_attention`` (their fused
    form, the default), which was skipped as an unsupported operator. A
    handle set there already (by mmengine or by a user) is kept.

    Returns:
        bool: True if the handle was added.
    """
    try:
        from mmengine.analysis import complexity_analysis
    except ImportError:  # an mmengine without the analysis package
        return False
    table = getattr(complexity_analysis, '_DEFAULT_SUPPORTED_FLOP_OPS', None)
    if table is None or 'aten::scaled_dot_product_attention' in table:
        return False
    table['aten::scaled_dot_product_attention'] = attention_flop_jit
    return True


def _apply():
    """Apply every fix above; called once by ``import mmseg_dfq``."""
    install_mmcv_ops_fallback()
    allow_mmengine_checkpoints()
    _register_checkpoint_loader()
    _register_atomic_writes()
    register_attention_flop_handle()
