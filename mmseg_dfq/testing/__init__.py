"""Test and demo helpers: synthetic data in the real on-disk layouts."""

from .synthetic import (
    FUNDUS_STYLES,
    MULTISITE_SITES,
    PROSTATE_SITES,
    PROSTATE_STYLES,
    make_fundus,
    make_multisite,
    make_prostate,
)

__all__ = [
    'FUNDUS_STYLES',
    'MULTISITE_SITES',
    'PROSTATE_SITES',
    'PROSTATE_STYLES',
    'make_fundus',
    'make_multisite',
    'make_prostate',
]
