"""GPU fast path of the Runner: compiled modules, bf16, channels-last, TF32.

Everything here is switched on from a config (see
``configs/_base_/fast_path.py``); no model code changes:

- :class:`FastPathHook` compiles ``model.backbone`` and ``model.decode_head``
  (and the head's losses) with ``torch.compile`` for training, where crops
  are static (CUDA graphs with ``mode='reduce-overhead'``), keeps eval
  forwards eager by default (validation/test sizes vary: no recompiles),
  turns TF32 on, makes every conv weight channels-last and returns the
  logged losses one iteration late, copied to the host asynchronously, so
  that mmengine's ``.item()`` on them does not stall the GPU queue.
- :class:`ChannelsLastDistributedDataParallel` converts the model to
  channels-last *before* DDP builds its gradient buckets, so that the
  channels-last gradients of 1x1 and depthwise convs match the bucket views
  (DDP otherwise warns ``Grad strides do not match bucket view strides`` and
  copies those gradients every step).
- :class:`BF16OptimWrapper` is bf16 autocast without a loss scaler:
  mmengine's ``AmpOptimWrapper`` keeps a ``GradScaler`` for bf16 as well,
  whose ``step`` reads the inf check on the host every iteration, and bf16
  has fp32's exponent range, so it needs no scaling.
"""

import contextlib
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.optim import OptimWrapper
from mmseg.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPERS

DEFAULT_COMPILE = dict(mode='reduce-overhead', dynamic=False)


def set_tf32(enabled: bool = True) -> None:
    """Let float32 matmuls and cuDNN convolutions use TF32 tensor cores.

    TF32 keeps fp32's range with a 10-bit mantissa in the products (sums
    stay fp32); on CPU these flags have no effect.

    Args:
        enabled (bool): Turn TF32 on (True) or off. Default: True.
    """
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, 'conv', None)
    if hasattr(matmul, 'fp32_precision') and conv is not None:
        # torch >= 2.9: the precision API. Reading the legacy allow_tf32
        # flags after it was used raises, so the two are never mixed here.
        value = 'tf32' if enabled else 'ieee'
        matmul.fp32_precision = value
        conv.fp32_precision = value
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def to_channels_last(module: nn.Module) -> nn.Module:
    """Give every 4-D parameter and buffer of ``module`` channels-last strides.

    Parameters keep their identity (``param.data`` is replaced), so an
    optimizer built before still updates them.

    Args:
        module (nn.Module): Changed in place.

    Returns:
        nn.Module: ``module``.
    """
    return module.to(memory_format=torch.channels_last)


def align_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Give optimizer state tensors the strides of their parameters.

    State loaded from a checkpoint is contiguous; after
    :func:`to_channels_last` the conv weights are not, and fused/foreach
    optimizer kernels want matching layouts.

    Args:
        optimizer (torch.optim.Optimizer): Changed in place.

    Returns:
        int: Number of state tensors that were re-strided.
    """
    changed = 0
    for group in optimizer.param_groups:
        for param in group['params']:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(
                        param, dtype=value.dtype
                    ).copy_(value)
                    changed += 1
    return changed


class _LaggedValues:
    """One iteration's log variables, copied to the host without waiting.

    A ``.item()`` on a GPU tensor waits for everything queued on the
    stream, the step queued after it included. So the values are copied
    to (pinned) host memory asynchronously right after their step is
    queued, and :meth:`get` waits for that copy only (a CUDA event), one
    iteration later, while the GPU works on the next step. The copy also
    keeps them from being overwritten by the next CUDA-graph replay.
    """

    def __init__(self, log_vars: dict) -> None:
        self.values = {}
        self.event = None
        for key, value in log_vars.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                if value.is_cuda:
                    value = value.to('cpu', non_blocking=True)
                    self.event = self.event or torch.cuda.Event()
                else:
                    value = value.clone()
            self.values[key] = value
        if self.event is not None:
            self.event.record()

    def get(self) -> dict:
        """The values, once their copies have landed."""
        if self.event is not None:
            self.event.synchronize()
        return self.values


class TrainEvalForward:
    """A module's forward that runs compiled in train mode, eager in eval.

    Installed as the instance attribute ``module.forward``, so the state
    dict, checkpoints and ``module.__class__`` are unchanged. The choice is
    made per call from ``module.training`` (a Python bool: no host sync).

    Args:
        module (nn.Module): The module whose forward is wrapped.
        train_kwargs (dict, optional): ``torch.compile`` arguments for
            training calls; None runs them eager.
        eval_kwargs (dict, optional): ``torch.compile`` arguments for eval
            calls; None runs them eager.
    """

    def __init__(
        self,
        module: nn.Module,
        train_kwargs: Optional[dict],
        eval_kwargs: Optional[dict],
    ):
        self.eager = module.forward
        self.module_name = type(module).__name__
        self.train_fn = (
            self.eager
            if train_kwargs is None
            else torch.compile(self.eager, **train_kwargs)
        )
        self.eval_fn = (
            self.eager
            if eval_kwargs is None
            else torch.compile(self.eager, **eval_kwargs)
        )
        self.module = module

    def __call__(self, *args, **kwargs):
        fn = self.train_fn if self.module.training else self.eval_fn
        return fn(*args, **kwargs)


def compile_forward(
    module: nn.Module,
    train_kwargs: Optional[dict],
    eval_kwargs: Optional[dict] = None,
) -> TrainEvalForward:
    """Compile ``module.forward`` for training (and optionally eval) calls.

    Args:
        module (nn.Module): Changed in place.
        train_kwargs (dict, optional): ``torch.compile`` arguments for train
            mode; None keeps train calls eager.
        eval_kwargs (dict, optional): The same for eval mode. Default: None.

    Returns:
        TrainEvalForward: The installed forward.

    Raises:
        RuntimeError: If ``module`` is already wrapped.
    """
    if isinstance(module.__dict__.get('forward'), TrainEvalForward):
        raise RuntimeError(
            f'compile_forward: {type(module).__name__} is already compiled'
        )
    forward = TrainEvalForward(module, train_kwargs, eval_kwargs)
    module.forward = forward
    return forward


def resolve_compile_kwargs(kwargs: Optional[dict], device_type: str):
    """Adapt ``torch.compile`` arguments to the device the model is on.

    CUDA graphs exist on CUDA only: ``mode='reduce-overhead'`` becomes the
    default mode elsewhere (inductor would skip the graphs with a warning
    per graph anyway).

    Args:
        kwargs (dict, optional): ``torch.compile`` arguments or None.
        device_type (str): ``'cuda'``, ``'cpu'``...

    Returns:
        dict | None: A new dict, or None when ``kwargs`` is None.
    """
    if kwargs is None:
        return None
    kwargs = dict(kwargs)
    if device_type != 'cuda' and kwargs.get('mode') == 'reduce-overhead':
        kwargs.pop('mode')
    return kwargs


@HOOKS.register_module()
class FastPathHook(Hook):
    """Compile the model's backbone and head, TF32, channels-last, lag logs.

    Args:
        compile (dict | bool): ``torch.compile`` arguments for the train-mode
            forward of each module of ``modules``; True means
            ``dict(mode='reduce-overhead', dynamic=False)`` (CUDA graphs on
            CUDA, the default inductor mode elsewhere); False or None keeps
            training eager. Default: True.
        compile_eval (dict | bool): The same for eval-mode forwards
            (validation, test). False keeps them eager: their image sizes
            vary, and every new size would be a recompile (and with CUDA
            graphs a new captured graph). Give e.g. ``dict(dynamic=True)``
            or, for a fixed test size, ``dict(mode='reduce-overhead')``.
            Default: False.
        modules (Sequence[str]): Attributes of the model to compile; missing
            ones (e.g. ``'neck'``) are skipped. Default:
            ('backbone', 'neck', 'decode_head').
        compile_losses (bool): Also compile the decode head's loss modules
            (``loss_decode`` and ``loss_rdwt``) for training. Default: True.
        tf32 (bool): Allow TF32 in fp32 matmuls and convolutions. Default:
            True.
        channels_last (bool): Give 4-D parameters channels-last strides
            (the RDWT backbone returns channels-last maps; matching weights
            keep the convs' layouts, and their gradients, consistent). A
            DDP-wrapped model must have been converted before wrapping:
            use ``model_wrapper_cfg=dict(type=
            'ChannelsLastDistributedDataParallel')``. Default: True.
        lag_log_vars (bool): Return each iteration's log variables one
            iteration late. mmengine's RuntimeInfoHook calls ``.item()`` on
            them after every ``train_step``; on the current iteration's
            values that waits for its whole step to finish, so the host
            cannot queue the next one while the GPU works. Iteration k
            reports the values of k - 1 (iteration 0 reports none; the last
            iteration's values reach the message hub after training, past
            the last log line). Default: True.
        non_blocking (bool): Copy batches to the GPU asynchronously (the
            data preprocessor's mmengine ``non_blocking`` switch, which
            mmseg's ``SegDataPreProcessor`` does not expose). A blocking
            copy waits for the GPU to finish the previous step. Needs
            ``pin_memory=True`` in the dataloader to overlap. Default: True.
    """

    priority = 'VERY_HIGH'

    def __init__(
        self,
        compile: Union[dict, bool, None] = True,
        compile_eval: Union[dict, bool, None] = False,
        modules: Sequence[str] = ('backbone', 'neck', 'decode_head'),
        compile_losses: bool = True,
        tf32: bool = True,
        channels_last: bool = True,
        lag_log_vars: bool = True,
        non_blocking: bool = True,
    ):
        self.compile_kwargs = self._as_kwargs(compile, 'compile')
        self.eval_kwargs = self._as_kwargs(compile_eval, 'compile_eval')
        if isinstance(modules, str) or not all(
            isinstance(m, str) for m in modules
        ):
            raise TypeError(
                f'FastPathHook: modules must be a sequence of attribute '
                f'names, got {modules!r}'
            )
        self.modules = tuple(modules)
        self.compile_losses = compile_losses
        self.tf32 = tf32
        self.channels_last = channels_last
        self.lag_log_vars = lag_log_vars
        self.non_blocking = non_blocking
        self.compiled = []
        self._cudagraphs = False
        self._pending = None
        self._own_train_step = None

    @staticmethod
    def _as_kwargs(value, name):
        if value is True:
            return dict(DEFAULT_COMPILE)
        if value is False or value is None:
            return None
        if not isinstance(value, dict):
            raise TypeError(
                f'FastPathHook: {name} must be a dict of torch.compile '
                f'arguments or a bool, got {value!r}'
            )
        return dict(value)

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_run(self, runner) -> None:
        """Set TF32, async batch copies and channels-last weights.

        Runs before the Runner loads a checkpoint or optimizer state.
        """
        if self.tf32:
            set_tf32(True)
        preprocessor = getattr(self._model(runner), 'data_preprocessor', None)
        if self.non_blocking and hasattr(preprocessor, '_non_blocking'):
            preprocessor._non_blocking = True
        if not self.channels_last:
            return
        if is_model_wrapper(runner.model):
            if not isinstance(
                runner.model, ChannelsLastDistributedDataParallel
            ):
                runner.logger.warning(
                    'FastPathHook: the model was wrapped by '
                    f'{type(runner.model).__name__} before the hook could '
                    'make it channels-last; set model_wrapper_cfg=dict('
                    "type='ChannelsLastDistributedDataParallel') so that "
                    'DDP buckets match the gradients. Left as it is.'
                )
            return
        to_channels_last(runner.model)

    def before_train(self, runner) -> None:
        """Align resumed optimizer state; compile; wrap ``train_step``."""
        if self.channels_last:
            for optimizer in self._optimizers(runner.optim_wrapper):
                align_optimizer_state(optimizer)
        self._compile(runner)
        if self.lag_log_vars:
            self._wrap_train_step(runner)

    def before_val(self, runner) -> None:
        """Compile (for a val-only or test-only run, if asked to)."""
        self._compile(runner)

    def before_test(self, runner) -> None:
        """Compile (for a val-only or test-only run, if asked to)."""
        self._compile(runner)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        """Start a new CUDA-graph step (the previous outputs are dead)."""
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    @staticmethod
    def _optimizers(optim_wrapper):
        # An OptimWrapperDict holds several wrappers.
        wrappers = (
            optim_wrapper.values()
            if hasattr(optim_wrapper, 'optim_wrappers')
            else [optim_wrapper]
        )
        return [w.optimizer for w in wrappers]

    def _compile(self, runner) -> None:
        if self.compiled or (
            self.compile_kwargs is None and self.eval_kwargs is None
        ):
            return
        model = self._model(runner)
        device = next(model.parameters()).device.type
        train_kwargs = resolve_compile_kwargs(self.compile_kwargs, device)
        eval_kwargs = resolve_compile_kwargs(self.eval_kwargs, device)
        self._cudagraphs = device == 'cuda' and (
            (self.compile_kwargs or {}).get('mode') == 'reduce-overhead'
        )
        for name in self.modules:
            module = getattr(model, name, None)
            if module is None:
                continue
            compile_forward(module, train_kwargs, eval_kwargs)
            self.compiled.append(name)
            if name == 'decode_head' and self.compile_losses:
                for loss_name, loss in self.loss_modules(module):
                    compile_forward(loss, train_kwargs, None)
                    self.compiled.append(f'{name}.{loss_name}')
        if not self.compiled:
            raise ValueError(
                f'FastPathHook: the model ({type(model).__name__}) has none '
                f'of the modules {self.modules}'
            )
        runner.logger.info(
            f'FastPathHook: compiled {", ".join(self.compiled)} for training '
            f'with {train_kwargs}, eval '
            + ('eager' if eval_kwargs is None else f'with {eval_kwargs}')
            + '; the first iterations compile (minutes with CUDA graphs)'
        )

    @staticmethod
    def loss_modules(head):
        """(name, module) of a decode head's losses that get compiled."""
        losses = getattr(head, 'loss_decode', None)
        if isinstance(losses, nn.ModuleList):
            found = [(f'loss_decode.{i}', m) for i, m in enumerate(losses)]
        elif isinstance(losses, nn.Module):
            found = [('loss_decode', losses)]
        else:
            found = []
        rdwt = getattr(head, 'loss_rdwt', None)
        if isinstance(rdwt, nn.Module):
            found.append(('loss_rdwt', rdwt))
        return found

    def _wrap_train_step(self, runner) -> None:
        model = runner.model
        if getattr(model.train_step, '_fast_path_lagged', False):
            return
        train_step = model.train_step
        # Restored after training (an instance attribute, if there was one).
        self._own_train_step = model.__dict__.get('train_step')
        self._pending = None

        def lagged_train_step(data, optim_wrapper):
            log_vars = train_step(data, optim_wrapper=optim_wrapper)
            current = _LaggedValues(log_vars)
            previous, self._pending = self._pending, current
            # The first iteration logs nothing; each value is logged once.
            return {} if previous is None else previous.get()

        lagged_train_step._fast_path_lagged = True
        model.train_step = lagged_train_step

    def after_train(self, runner) -> None:
        """Record the last iteration's values; restore ``train_step``."""
        if self._pending is not None:
            for key, value in self._pending.get().items():
                runner.message_hub.update_scalar(f'train/{key}', value)
            self._pending = None
        if getattr(runner.model.train_step, '_fast_path_lagged', False):
            if self._own_train_step is None:
                del runner.model.train_step
            else:
                runner.model.train_step = self._own_train_step


@MODEL_WRAPPERS.register_module()
class ChannelsLastDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel of a model made channels-last first.

    DDP lays its gradient bucket views out like the parameters when it is
    built. The RDWT backbone hands channels-last maps to 1x1 and depthwise
    convs, whose weight gradients then come out channels-last; for those
    weight shapes the strides of the size-1 dims differ from a contiguous
    weight's, so DDP warns ``Grad strides do not match bucket view
    strides`` and copies them every step. Converting the weights before
    the buckets exist makes both layouts agree.

    Args:
        module (nn.Module): The model to wrap.
        **kwargs: :class:`MMDistributedDataParallel` arguments.
    """

    def __init__(self, module: nn.Module, **kwargs):
        to_channels_last(module)
        super().__init__(module=module, **kwargs)


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under bf16 autocast, unscaled.

    Unlike mmengine's ``AmpOptimWrapper(dtype='bfloat16')`` there is no
    ``GradScaler`` (its ``step`` syncs with the host to check for infs, and
    bf16 does not underflow like fp16). Ops on autocast's fp32 list (norms,
    softmax, losses) and the RDWT covariance stay float32.

    Args:
        **kwargs: :class:`OptimWrapper` arguments.
    """

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module):
        """Accumulation context of OptimWrapper plus bf16 autocast.

        Args:
            model (nn.Module): The (possibly wrapped) model.
        """
        device = next(model.parameters()).device.type
        with super().optim_context(model):
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                yield
