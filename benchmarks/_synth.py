"""Fast synthetic interaction matrices and kernel blocks for the benchmarks (NumPy only).

Item popularity follows a power law over a random item order, user activity is
log-normal; the matrix is binary (1.0 at each interaction). 200,000 × 50,000 with
5,000,000 entries takes a few seconds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse


def power_law_matrix(n_users, n_items, nnz, *, exponent=0.8, sigma=1.0, seed=0):
    """A binary CSR matrix with exactly ``nnz`` stored entries (unless it cannot fit).

    User u draws Poisson(a_u) items with replacement, a_u log-normal (log-sd ``sigma``)
    scaled to a little over ``nnz`` in total; item j is drawn with probability
    ∝ (1 + π(j))^-exponent for a random permutation π. Repeats are removed and a random
    subset of exactly ``nnz`` distinct entries is kept.
    """
    rng = np.random.default_rng(seed)
    popularity = (1.0 + rng.permutation(n_items)) ** (-float(exponent))
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    activity = rng.lognormal(0.0, sigma, n_users)
    keys = np.zeros(0, dtype=np.int64)
    oversample = 1.1
    for _ in range(6):
        counts = rng.poisson(activity * (oversample * nnz / activity.sum()))
        rows = np.repeat(np.arange(n_users, dtype=np.int64), counts)
        cols = np.minimum(np.searchsorted(cdf, rng.random(rows.size)), n_items - 1)
        keys = np.unique(rows * n_items + cols)
        if keys.size >= nnz:
            break
        oversample *= 1.3 * nnz / max(keys.size, 1)
    if keys.size > nnz:
        keys = np.sort(rng.choice(keys, size=nnz, replace=False))
    rows, cols = np.divmod(keys, n_items)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return scipy.sparse.csr_matrix(
        (np.ones(keys.size), cols.astype(np.int32), indptr), shape=(n_users, n_items)
    )


def kernel_block(n_rows, n_gathered, mean_entries, k, *, seed=0, sigma=0.8, fixed=None,
                 alpha=10.0, lam=0.1):
    """Inputs of :func:`daskwals._kernels.solve_block` for one synthetic row block.

    ``n_rows`` rows with log-normal entry counts of mean ``mean_entries`` (or exactly
    ``fixed`` each) over ``n_gathered`` gathered factor rows drawn by a power law; the
    implicit-feedback model (W0 = 1, w = alpha - 1, base = VᵀV + λI with V ~ N(0, 0.01)).
    Returns ``(args, nnz)`` with ``args`` = (indptr, indices, data, ew, r, cg, vg, base).
    """
    rng = np.random.default_rng(seed)
    if fixed is None:
        counts = rng.lognormal(np.log(mean_entries) - sigma**2 / 2, sigma, n_rows)
        counts = np.clip(np.round(counts), 1, n_gathered).astype(np.int64)
    else:
        counts = np.full(n_rows, int(fixed), dtype=np.int64)
    popularity = (1.0 + rng.permutation(n_gathered)) ** -0.8
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    indices = []
    for c in counts:
        picked = np.unique(np.searchsorted(cdf, rng.random(2 * c + 8)))[:c]
        while picked.size < c:  # a very popular head: fill up with uniform draws
            extra = rng.integers(0, n_gathered, c)
            picked = np.unique(np.concatenate([picked, extra]))[:c]
        indices.append(rng.permutation(picked))
    indptr = np.zeros((1, n_rows + 1), dtype=np.int64)
    np.cumsum(counts, out=indptr[0, 1:])
    indices = np.concatenate(indices).astype(np.int64)
    vg = 0.1 * rng.standard_normal((n_gathered, k))
    base = vg.T @ vg + lam * np.eye(k)
    args = (indptr, indices, np.ones(indices.size), np.zeros(0), np.full(n_rows, alpha - 1.0),
            np.ones(n_gathered), vg, base)
    return args, int(indices.size)


def normal_equation_flops(counts, k):
    """Flops of building and solving the k × k normal equations of rows with ``counts``
    entries: t·k(k+1) (SYRK, lower half) + k³/3 (Cholesky) + 2k² (two solves) + 2tk."""
    counts = np.asarray(counts, dtype=np.float64)
    nonempty = counts > 0
    return float(np.sum(counts * k * (k + 1) + 2 * counts * k)
                 + nonempty.sum() * (k**3 / 3 + 2 * k * k))
