"""Whitening helpers (models/utils/whitening.py), against NumPy."""

import numpy as np

from mmseg_dfq.models.utils import (
    channel_covariance,
    instance_norm,
    off_diagonal_abs_sum,
)

from .dfq_parts import (
    feats_for,
)


def test_rdwt_helpers_match_numpy():
    x = feats_for([6], h=32, w=48)[0]  # 8 x 12 maps
    normed = instance_norm(x)
    cov = channel_covariance(normed)
    flat = normed.double().numpy().reshape(2, 6, -1)
    ref = np.einsum('bcn,bdn->bcd', flat, flat) / (8 * 12 - 1)
    np.testing.assert_allclose(cov.numpy(), ref, atol=1e-5)
    rows, cols = np.triu_indices(6, k=1)
    np.testing.assert_allclose(
        off_diagonal_abs_sum(cov).numpy(),
        np.abs(ref[:, rows, cols]).sum(-1),
        rtol=1e-5,
    )
