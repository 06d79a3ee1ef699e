"""Start-up hook of mmseg-dfq: ``mmcv.ops`` on mmcv-lite in any import order.

mmseg imports ``mmcv.ops`` while importing ``mmseg.models``, and mmcv-lite
has no compiled ops, so ``from mmseg.apis import init_model`` fails unless
``import mmseg_dfq`` ran first and installed the pure-PyTorch stand-ins of
:mod:`mmseg_dfq.compat`. Installing the package also installs
``mmseg_dfq_hook.pth``, whose one line Python runs at start-up: it puts a
stub finder at the front of ``sys.meta_path`` that ignores every module but
``mmcv.ops`` and imports nothing (this module included) until then, so
programs that never import mmcv pay for one class definition. When
``mmcv.ops`` is first imported, the stub calls :func:`find_spec` here,
which

- steps aside if mmcv has its compiled ops (``mmcv._ext``: a full mmcv) or
  mmseg-dfq is no longer importable; otherwise
- loads ``mmseg_dfq.compat`` alone (not the ``mmseg_dfq`` package, whose
  ``__init__`` imports ``mmseg.models`` and would re-enter the import in
  progress) and returns the ``mmcv.ops`` stand-in it builds,

and then removes itself from ``sys.meta_path``. ``import mmseg_dfq`` later
reuses that same ``mmseg_dfq.compat`` module. :func:`install` puts the
same finder in place by hand (e.g. in an environment without the ``.pth``).
"""

import sys

__all__ = ['MmcvOpsFinder', 'find_spec', 'install', 'remove']


def _load_compat():
    """``mmseg_dfq.compat`` without importing the ``mmseg_dfq`` package.

    Returns:
        module | None: The module, or None if mmseg-dfq cannot be found.
    """
    import importlib.machinery
    import importlib.util

    compat = sys.modules.get('mmseg_dfq.compat')
    if compat is not None:
        return compat
    package = sys.modules.get('mmseg_dfq')
    if package is not None:
        locations = package.__path__
    else:
        # Finds the package (editable finder or site-packages) without
        # running its __init__.
        spec = importlib.util.find_spec('mmseg_dfq')
        if spec is None or not spec.submodule_search_locations:
            return None
        locations = spec.submodule_search_locations
    spec = importlib.machinery.PathFinder.find_spec(
        'mmseg_dfq.compat', list(locations)
    )
    if spec is None:
        return None
    compat = importlib.util.module_from_spec(spec)
    sys.modules['mmseg_dfq.compat'] = compat
    try:
        spec.loader.exec_module(compat)
    except BaseException:
        del sys.modules['mmseg_dfq.compat']
        raise
    return compat


class _FallbackLoader:
    """Loader that returns the ``mmcv.ops`` stand-in built by compat."""

    def __init__(self, compat):
        self.compat = compat

    def create_module(self, spec):
        self.compat.install_mmcv_ops_fallback()
        return sys.modules['mmcv.ops']

    def exec_module(self, module):
        pass


def find_spec(fullname, path=None, target=None):
    """Return a spec for the stand-in ``mmcv.ops``, or None.

    The meta path finders' ``find_spec`` (the start-up stub calls it for
    ``mmcv.ops`` only).

    Args:
        fullname (str): Module being imported.
        path: Parent package's ``__path__`` (unused).
        target: Unused.

    Returns:
        ModuleSpec | None: None for every other module, with a full mmcv,
        or when mmseg-dfq cannot be found.
    """
    if fullname != 'mmcv.ops':
        return None
    import importlib.util

    # One decision is enough: mmcv.ops is then in sys.modules.
    remove()
    if importlib.util.find_spec('mmcv._ext') is not None:
        return None
    compat = _load_compat()
    if compat is None:
        return None
    return importlib.util.spec_from_loader('mmcv.ops', _FallbackLoader(compat))


class MmcvOpsFinder:
    """Meta path finder that provides ``mmcv.ops`` when mmcv has no ops.

    The ``.pth`` line builds an equivalent stub inline (so that start-up
    imports nothing); both carry ``_mmseg_dfq_hook`` for :func:`remove`.
    """

    _mmseg_dfq_hook = True
    find_spec = staticmethod(find_spec)


def _is_ours(finder):
    return getattr(finder, '_mmseg_dfq_hook', False)


def install():
    """Put :class:`MmcvOpsFinder` first on ``sys.meta_path`` (idempotent)."""
    if 'mmcv.ops' not in sys.modules and not any(map(_is_ours, sys.meta_path)):
        sys.meta_path.insert(0, MmcvOpsFinder)


def remove():
    """Take the hook's finders off ``sys.meta_path``."""
    for finder in [f for f in sys.meta_path if _is_ours(f)]:
        sys.meta_path.remove(finder)
