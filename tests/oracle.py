"""Dense NumPy oracle of WALS, written straight from the objective (DESIGN.md §1)."""

from __future__ import annotations

import numpy as np


def weights_matrix(mask, w0, row_weights=None, col_weights=None):
    """W: W0 everywhere, W0 + R_i C_j on stored entries (R = C = 0 in ALS mode)."""
    n, m = mask.shape
    if row_weights is None:
        return np.full((n, m), float(w0))
    r = np.broadcast_to(np.asarray(row_weights, float), (n,))
    c = np.broadcast_to(np.asarray(col_weights, float), (m,))
    return w0 + np.outer(r, c) * mask


def solve_rows(A, W, V, lam):
    """argmin_u Σ_j W_ij (A_ij - u·v_j)² + λ|u|² for every row (0 where undetermined)."""
    k = V.shape[1]
    out = np.zeros((A.shape[0], k))
    for i in range(A.shape[0]):
        lhs = (V * W[i][:, None]).T @ V + (lam or 0.0) * np.eye(k)
        rhs = V.T @ (W[i] * A[i])
        if not np.any(rhs) and np.linalg.matrix_rank(lhs) < k:
            continue
        out[i] = np.linalg.solve(lhs, rhs)
    return out


def loss(A, W, U, V, lam):
    """Σ W (A - UVᵀ)² + λ(‖U‖² + ‖V‖²), formed densely."""
    return float(np.sum(W * (A - U @ V.T) ** 2) + (lam or 0.0) * (np.sum(U**2) + np.sum(V**2)))


def dense_wals(A, mask, U0, V0, *, w0, lam, row_weights=None, col_weights=None, n_iter=1):
    """Iterations of exact row-then-column updates; returns U, V and the loss history."""
    W = weights_matrix(mask, w0, row_weights, col_weights)
    U, V = np.array(U0, float), np.array(V0, float)
    history = []
    for _ in range(n_iter):
        U = solve_rows(A, W, V, lam)
        V = solve_rows(A.T, W.T, U, lam)
        history.append(loss(A, W, U, V, lam))
    return U, V, history
