"""Block-by-block generator of a planted low-rank ratings matrix (for out-of-core benchmarks).

Plain NumPy; :func:`daskwals.write_synthetic` writes the blocks to a ratings store. Model:

- item popularity ``pop_v ∝ (1 + π(v))^-α`` for a random permutation π (a power law over a
  random item order, so every column block gets popular and rare items);
- user activity ``c_u`` log-normal with mean ``nnz_target / n_users`` and log-sd ``σ``;
- the entries of user u: ``Poisson(s · c_u)`` draws from all items with probability
  ``pop_v``, repeats removed. So (u, v) is stored with probability
  ``1 - exp(-s · c_u · pop_v)``; the scale ``s ≥ 1`` makes the expected nnz equal the
  target despite repeats (found from the activity and popularity distributions, not
  from the draws);
- values ``p_u · q_v + noise · ε`` with planted factors of entries ``N(0, rank^-1/2)``
  (so ``p_u · q_v`` has unit variance), or 1.0 everywhere when ``implicit``.

Randomness is drawn from generators seeded with ``(seed, stream, row block)``: the same
arguments give the same store, and each row block is generated without the others (all
its column blocks at once, which keeps the cost per entry, not per block).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

# generator streams, one per kind of draw
_POPULARITY, _ACTIVITY, _USER_FACTORS, _ITEM_FACTORS, _ENTRIES, _NOISE = range(6)
_SLICE = 1 << 16


class PlantedBlocks:
    """The row blocks of a planted matrix, generated on demand.

    Memory: the popularity and its cumulative sum (16 B per item), the planted item
    factors (4·rank B per item, unless ``implicit``) and one row block's entries.
    """

    def __init__(self, shape, chunks, nnz_target, *, rank=16, seed=0, popularity_exponent=0.8,
                 activity_sigma=1.0, noise=0.1, implicit=False):
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.rank = int(rank)
        self.seed = int(seed)
        self.noise = float(noise)
        self.implicit = bool(implicit)
        self.activity_sigma = float(activity_sigma)
        self.mean_activity = float(nnz_target) / self.shape[0]
        n_items = self.shape[1]
        order = self._rng(_POPULARITY).permutation(n_items)
        pop = (1.0 + order) ** (-float(popularity_exponent))
        self.popularity = pop / pop.sum()
        self.cdf = np.cumsum(self.popularity)
        self.cdf /= self.cdf[-1]
        self.scale = _calibrate(self.shape, float(nnz_target), self.mean_activity,
                                self.activity_sigma, self.popularity)
        self.item_factors = None
        if not self.implicit:
            factors = self._rng(_ITEM_FACTORS).standard_normal((n_items, self.rank))
            self.item_factors = (factors * self.rank**-0.25).astype(np.float32)

    def _rng(self, *key):
        return np.random.default_rng([self.seed, *key])

    def row_block(self, i):
        """The entries of row block i, one dict per column block (``None`` when empty).

        Each dict holds block-local ``row``, ``col`` (sorted row-major) and ``value``.
        """
        n_users, n_items = self.shape
        rc, cc = self.chunks
        start, stop = i * rc, min(n_users, (i + 1) * rc)
        sigma = self.activity_sigma
        mu = np.log(self.mean_activity) - sigma**2 / 2
        activity = self._rng(_ACTIVITY, i).lognormal(mu, sigma, size=stop - start)
        rng = self._rng(_ENTRIES, i)
        counts = rng.poisson(self.scale * activity)
        users = np.repeat(np.arange(activity.size, dtype=np.int64), counts)
        items = np.searchsorted(self.cdf, rng.random(users.size), side="right")
        np.minimum(items, n_items - 1, out=items)
        del counts
        # unique (user, item) keys come back sorted: row-major order, no repeats
        keys = np.unique(users * n_items + items)
        del users, items
        row, col = keys // n_items, keys % n_items
        del keys
        if self.implicit:
            value = np.ones(row.size)
        else:
            user_factors = self._rng(_USER_FACTORS, i).standard_normal((activity.size, self.rank))
            user_factors = (user_factors * self.rank**-0.25).astype(np.float32)
            value = np.empty(row.size)
            for s in range(0, row.size, _SLICE):  # gathered factor rows a slice at a time
                e = slice(s, s + _SLICE)
                value[e] = np.einsum("ij,ij->i", user_factors[row[e]], self.item_factors[col[e]])
            if self.noise:
                value += self.noise * self._rng(_NOISE, i).standard_normal(row.size)
        # split into column blocks; a stable sort keeps each block row-major
        block = col // cc
        order = np.argsort(block, kind="stable")
        bounds = np.searchsorted(block[order], np.arange(-(-n_items // cc) + 1))
        out = []
        for j in range(bounds.size - 1):
            sel = order[bounds[j] : bounds[j + 1]]
            out.append({"row": row[sel], "col": col[sel] - j * cc, "value": value[sel]}
                       if sel.size else None)
        return out


def _calibrate(shape, nnz_target, mean_activity, sigma, popularity, n_quantiles=256):
    """The scale s with Σ_uv E[1 - exp(-s·c_u·pop_v)] = nnz_target (by bisection).

    Users are represented by quantiles of the log-normal activity distribution, items by
    their sorted popularities summed over geometric bins (single items at the popular
    end, where saturation happens).
    """
    n_users, n_items = shape
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles
    activity = np.exp(np.log(mean_activity) - sigma**2 / 2 + sigma * ndtri(levels))
    pop = np.sort(popularity)[::-1]
    edges = np.unique(np.geomspace(1, n_items + 1, 2048).astype(np.int64) - 1)
    edges = np.unique(np.r_[edges, n_items])
    counts = np.diff(edges)
    means = np.add.reduceat(pop, edges[:-1]) / counts

    def expected(scale):
        rate = scale * activity[:, None] * means[None, :]
        return n_users * float((-np.expm1(-rate) @ counts).mean())

    lo, hi = 1.0, 2.0
    while expected(hi) < nnz_target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected(mid) < nnz_target:
            lo = mid
        else:
            hi = mid
    return hi
