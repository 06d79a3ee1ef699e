"""Import the plugin before any test module imports ``mmseg.models``.

``import mmseg_dfq`` installs the ``mmcv.ops`` stand-ins that
``mmseg.models`` needs on mmcv-lite; the import sorter places it after the
third-party ``mmseg`` imports inside a module, so it happens here, first.
"""

import pytest
from mmengine.registry import init_default_scope

import mmseg_dfq  # noqa: F401


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build configs in mmseg's scope, as the Runner does."""
    init_default_scope('mmseg')
