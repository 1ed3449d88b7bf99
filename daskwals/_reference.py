"""Plain NumPy twins of the numba kernels in :mod:`daskwals._kernels`.

They take the same arguments and return the same values, written for clarity rather
than speed, and serve as the oracle of the kernels in the tests. Each solver path of
the kernels (Cholesky, Woodbury, CG) has its own twin, with the same rule for which
rows take which path.
"""

from __future__ import annotations

import numpy as np

from ._kernels import (
    _BETA_FLOOR,
    _FORCED_MAX_FACTOR,
    _RESIDUAL_TOL,
    METHODS,
    ROTATION_COST,
    cholesky_cost,
    woodbury_cost,
)


def _row_entries(indptr, row):
    """Positions of the stored entries of ``row`` across all column pieces."""
    return np.concatenate(
        [np.arange(indptr[j, row], indptr[j, row + 1]) for j in range(indptr.shape[0])]
    ).astype(np.int64)


def _row_system(indptr, indices, data, ew, r, cg, vg, w0, row):
    """(positions, gathered rows V, weights w, right-hand coefficients c) of one row."""
    pos = _row_entries(indptr, row)
    v = vg[indices[pos]]
    w = r[row] * cg[indices[pos]]
    if ew.shape[0]:
        w = w * ew[pos]
    return pos, v, w, (w0 + w) * data[pos]


def _cholesky_solve(base, shift, v, w, c):
    """x of (base + shift·I + Vᵀ diag(w) V) x = Vᵀ c, or None when it is singular."""
    lhs = base + shift * np.eye(base.shape[0]) + (v * w[:, None]).T @ v
    try:
        chol = np.linalg.cholesky(lhs)
    except np.linalg.LinAlgError:
        return None
    # the kernel's relative pivot test: a pivot² below 1e-13 × the largest diagonal
    if np.min(np.diag(chol)) ** 2 <= 1e-13 * np.max(np.diag(lhs)):
        return None
    return np.linalg.solve(chol.T, np.linalg.solve(chol, v.T @ c))


def _woodbury_solve(beta, q, shift, v, w, c):
    """The same solution through the t × t push-through system (module docstring of
    :mod:`daskwals._kernels`), or None when its residual check fails."""
    b = beta + shift
    vrot = v @ q
    rhs = vrot.T @ c
    keep = w > 0
    s_mat = np.sqrt(w[keep])[:, None] * vrot[keep] / np.sqrt(b)
    zeta = rhs / np.sqrt(b)
    m = np.eye(s_mat.shape[0]) + s_mat @ s_mat.T
    s = np.linalg.solve(m, s_mat @ zeta)
    xt = (zeta - s_mat.T @ s) / np.sqrt(b)
    residual = rhs - b * xt - vrot.T @ (w * (vrot @ xt))
    if np.linalg.norm(residual) > _RESIDUAL_TOL * np.linalg.norm(rhs):
        return None
    return q @ xt


def _woodbury_rows(indptr, indices, ew, r, cg, vg, w0, ridge, beta, mode):
    """The rows the kernel sends to the Woodbury path (same rule, same cost model)."""
    n_rows = indptr.shape[1] - 1
    k = beta.shape[0]
    use = np.zeros(n_rows, dtype=bool)
    gains = np.zeros(n_rows)
    for row in range(n_rows):
        pos, _, w, _ = _row_system(indptr, indices, np.zeros(indices.shape[0]), ew, r, cg,
                                   vg, w0, row)
        shift = 0.0 if ridge is None else float(ridge[row])
        if pos.size == 0 or not np.all(w >= 0) \
                or not beta[0] + shift > _BETA_FLOOR * (beta[-1] + shift):
            continue
        t_eff = np.count_nonzero(w)
        gains[row] = cholesky_cost(pos.size, k) - woodbury_cost(t_eff, pos.size, k)
        use[row] = (mode == 2 and t_eff <= _FORCED_MAX_FACTOR * k + 64) or gains[row] > 0
    if mode == 0 and use.any():
        touched = np.unique(np.concatenate([indices[_row_entries(indptr, row)]
                                            for row in np.flatnonzero(use)]))
        if gains[use].sum() <= ROTATION_COST * k * k * touched.size:
            use[:] = False
    return use


def solve_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out,
                ridge=None, method="auto", info=None):
    """NumPy twin of :func:`daskwals._kernels.solve_block`."""
    n_rows = indptr.shape[1] - 1
    k = base.shape[0]
    mode = METHODS[method]
    use = np.zeros(n_rows, dtype=bool)
    if mode != 1 and k >= 8:
        beta, q = np.linalg.eigh(base)
        use = _woodbury_rows(indptr, indices, ew, r, cg, vg, w0, ridge, beta, mode)
    n_wood = 0
    for row in range(n_rows):
        pos, v, w, c = _row_system(indptr, indices, data, ew, r, cg, vg, w0, row)
        if pos.size == 0:
            if solve_empty:
                x_out[row] = 0.0
            continue
        shift = 0.0 if ridge is None else float(ridge[row])
        x = _woodbury_solve(beta, q, shift, v, w, c) if use[row] else None
        n_wood += x is not None
        if x is None:
            x = _cholesky_solve(base, shift, v, w, c)
        if x is None:
            return row, pos.size
        x_out[row] = x
    if info is not None:
        info["woodbury_rows"] = n_wood
    return -1, 0


def cg_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out, steps=3,
             ridge=None):
    """NumPy twin of :func:`daskwals._kernels.cg_block` (textbook CG, warm start)."""
    n_rows = indptr.shape[1] - 1
    k = base.shape[0]
    for row in range(n_rows):
        pos, v, w, c = _row_system(indptr, indices, data, ew, r, cg, vg, w0, row)
        if pos.size == 0:
            if solve_empty:
                x_out[row] = 0.0
            continue
        shift = 0.0 if ridge is None else float(ridge[row])
        lhs = base + shift * np.eye(k) + (v * w[:, None]).T @ v
        x = np.array(x_out[row], dtype=np.float64)
        res = v.T @ c - lhs @ x
        d = res.copy()
        rr = res @ res
        for _ in range(steps):
            if not rr > 0:
                break
            ad = lhs @ d
            dad = d @ ad
            if not dad > 0:
                return row, pos.size
            alpha = rr / dad
            x += alpha * d
            res -= alpha * ad
            rr_new = res @ res
            d = res + (rr_new / rr) * d
            rr = rr_new
        x_out[row] = x
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
