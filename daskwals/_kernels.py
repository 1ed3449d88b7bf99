"""Numba block kernels for the WALS normal equations, solves and loss.

This module has no dask import. Every kernel works on one *row block*: the rows of
the block are described by a stacked CSR layout that lets several column blocks of
the ratings share one call without merging them:

``indptr``   int64 (J, n_rows + 1). The stored entries of row ``r`` that came from
             column block ``j`` are ``indices[indptr[j, r]:indptr[j, r + 1]]``.
``indices``  int64 (nnz,). Positions into ``vg``, the gathered fixed-factor rows.
``data``     float64 (nnz,). The ratings A_ij.
``ew``       float64 (nnz,) or (0,). Per-entry weight multipliers e_ij (none: all ones).
``r``        float64 (n_rows,). Row weights R_i of the block.
``cg``       float64 (q,). Column weights C_j, aligned with ``vg``.
``vg``       float64 (q, k). The fixed factor's rows that the block's entries touch.

With w_ij = R_i * C_j * e_ij, row ``i``'s normal equations are (DESIGN.md §1)::

    (W0·G + λI + Σ_{j∈S_i} w_ij v_j v_jᵀ) u_i = Σ_{j∈S_i} (W0 + w_ij) A_ij v_j

where ``base`` = W0·G + λI is precomputed once per sweep. A plain NumPy twin of each
kernel lives in :mod:`daskwals._reference`.
"""

from __future__ import annotations

import numba
import numpy as np

# Entries are accumulated in tiles of this many stored entries so that the work
# buffers stay small (k × TILE) however many entries one row has.
TILE = 128

# Reassociation lets LLVM vectorise the dot products; NaN/inf semantics are kept
# (no "nnan"/"ninf") because the Cholesky pivot test relies on them.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_jit = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")


@_jit
def _cholesky_solve_inplace(a, b, k):
    """Solve ``a x = b`` for a symmetric positive definite ``a`` (lower half used).

    ``a`` is overwritten with its Cholesky factor L and ``b`` with x. Returns False
    (leaving garbage) when a pivot is not safely positive: the system is singular or
    indefinite in floating point.
    """
    # Relative pivot threshold: a pivot this small compared with the matrix's
    # largest diagonal means the system is numerically singular.
    scale = 0.0
    for i in range(k):
        if a[i, i] > scale:
            scale = a[i, i]
    tiny = scale * 1e-13
    if not scale > 0.0:
        return False
    for j in range(k):
        d = a[j, j]
        for p in range(j):
            d -= a[j, p] * a[j, p]
        if not d > tiny:
            return False
        d = np.sqrt(d)
        a[j, j] = d
        inv = 1.0 / d
        for i in range(j + 1, k):
            s = a[i, j]
            for p in range(j):
                s -= a[i, p] * a[j, p]
            a[i, j] = s * inv
    # forward: L y = b
    for i in range(k):
        s = b[i]
        for p in range(i):
            s -= a[i, p] * b[p]
        b[i] = s / a[i, i]
    # backward: Lᵀ x = y
    for i in range(k - 1, -1, -1):
        s = b[i]
        for p in range(i + 1, k):
            s -= a[p, i] * b[p]
        b[i] = s / a[i, i]
    return True


@_jit
def solve_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out):
    """Build and solve every row's normal equations of one block.

    Parameters are described in the module docstring. ``base`` is (k, k) float64,
    ``w0`` the unobserved weight W0. Rows with no stored entries are set to zero
    (their exact minimiser) when ``solve_empty`` is true and left untouched
    otherwise. ``x_out`` (n_rows, k) receives the solutions.

    Returns
    -------
    failed : int
        -1 on success, else the block-local index of the first row whose system
        was singular (that row and the ones after it are not solved).
    count : int
        The stored-entry count of that row (0 on success).
    """
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    k = vg.shape[1]
    has_ew = ew.shape[0] > 0
    a = np.empty((k, k))
    b = np.empty(k)
    # tile buffers, transposed so that the inner dot products run over contiguous memory
    vt = np.empty((k, TILE))
    wt = np.empty((k, TILE))
    for row in range(n_rows):
        count = 0
        for j in range(n_pieces):
            count += indptr[j, row + 1] - indptr[j, row]
        if count == 0:
            if solve_empty:
                for c in range(k):
                    x_out[row, c] = 0.0
            continue
        for c1 in range(k):
            b[c1] = 0.0
            for c2 in range(c1 + 1):
                a[c1, c2] = base[c1, c2]
        rw = r[row]
        t = 0
        for j in range(n_pieces):
            for p in range(indptr[j, row], indptr[j, row + 1]):
                q = indices[p]
                w = rw * cg[q]
                if has_ew:
                    w *= ew[p]
                coef = (w0 + w) * data[p]
                for c in range(k):
                    v = vg[q, c]
                    vt[c, t] = v
                    wt[c, t] = w * v
                    b[c] += coef * v
                t += 1
                if t == TILE:
                    _accumulate_tile(a, wt, vt, t, k)
                    t = 0
        if t > 0:
            _accumulate_tile(a, wt, vt, t, k)
        if not _cholesky_solve_inplace(a, b, k):
            return row, count
        for c in range(k):
            x_out[row, c] = b[c]
    return -1, 0


@_jit
def _accumulate_tile(a, wt, vt, t, k):
    """a[c1, c2] += Σ_p wt[c1, p] · vt[c2, p] on the lower triangle (a SYRK-like update)."""
    for c1 in range(k):
        w_row = wt[c1]
        for c2 in range(c1 + 1):
            v_row = vt[c2]
            s = 0.0
            for p in range(t):
                s += w_row[p] * v_row[p]
            a[c1, c2] += s


@_jit
def loss_block(indptr, indices, data, ew, r, cg, x, vg):
    """Sparse loss sums of one block, evaluated at factors ``x`` (rows) and ``vg``.

    Returns a float64 array ``[Σ (A-p)², Σ p², Σ w (A-p)², Σ w]`` over the block's
    stored entries, with p_ij = x_i · v_j and w_ij = R_i C_j e_ij. The full sparse
    term of the objective is ``W0 (s0 - s1) + s2``.
    """
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    k = vg.shape[1]
    has_ew = ew.shape[0] > 0
    out = np.zeros(4)
    for row in range(n_rows):
        rw = r[row]
        for j in range(n_pieces):
            for p in range(indptr[j, row], indptr[j, row + 1]):
                q = indices[p]
                pred = 0.0
                for c in range(k):
                    pred += x[row, c] * vg[q, c]
                w = rw * cg[q]
                if has_ew:
                    w *= ew[p]
                err = data[p] - pred
                out[0] += err * err
                out[1] += pred * pred
                out[2] += w * err * err
                out[3] += w
    return out
