"""Plain NumPy twins of the numba kernels in :mod:`daskwals._kernels`.

They take the same arguments and return the same values, written for clarity rather
than speed, and serve as the oracle of the kernels in the tests.
"""

from __future__ import annotations

import numpy as np


def _row_entries(indptr, row):
    """Positions of the stored entries of ``row`` across all column pieces."""
    return np.concatenate(
        [np.arange(indptr[j, row], indptr[j, row + 1]) for j in range(indptr.shape[0])]
    ).astype(np.int64)


def solve_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out):
    """NumPy twin of :func:`daskwals._kernels.solve_block`."""
    n_rows = indptr.shape[1] - 1
    for row in range(n_rows):
        pos = _row_entries(indptr, row)
        if pos.size == 0:
            if solve_empty:
                x_out[row] = 0.0
            continue
        v = vg[indices[pos]]
        w = r[row] * cg[indices[pos]]
        if ew.shape[0]:
            w = w * ew[pos]
        lhs = base + (v * w[:, None]).T @ v
        rhs = v.T @ ((w0 + w) * data[pos])
        try:
            chol = np.linalg.cholesky(lhs)
        except np.linalg.LinAlgError:
            return row, pos.size
        x_out[row] = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))
    return -1, 0


def loss_block(indptr, indices, data, ew, r, cg, x, vg):
    """NumPy twin of :func:`daskwals._kernels.loss_block`."""
    out = np.zeros(4)
    for row in range(indptr.shape[1] - 1):
        pos = _row_entries(indptr, row)
        if pos.size == 0:
            continue
        pred = vg[indices[pos]] @ x[row]
        w = r[row] * cg[indices[pos]]
        if ew.shape[0]:
            w = w * ew[pos]
        err = data[pos] - pred
        out += [np.sum(err**2), np.sum(pred**2), np.sum(w * err**2), np.sum(w)]
    return out
