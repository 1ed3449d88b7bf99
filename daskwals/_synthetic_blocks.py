"""Block-by-block generator of a planted low-rank ratings matrix (for out-of-core benchmarks).

Plain NumPy; :func:`daskwals.write_synthetic` writes the blocks to a ratings store. Model:

- item popularity ``pop_v ∝ (1 + π(v))^-α`` for a random permutation π (a power law over a
  random item order, so every column block gets popular and rare items);
- user activity ``c_u`` log-normal with mean ``nnz_target / n_users`` and log-sd ``σ``;
- the entries of user u in column block J: ``Poisson(s · c_u · pop(J))`` draws from the
  items of J with probability ∝ ``pop_v``, repeats removed. So (u, v) is stored with
  probability ``1 - exp(-s · c_u · pop_v)``; the scale ``s ≥ 1`` makes the expected nnz
  equal the target despite repeats (found from the activity and popularity
  distributions, not from the draws);
- values ``p_u · q_v + noise · ε`` with planted factors of entries ``N(0, rank^-1/2)``
  (so ``p_u · q_v`` has unit variance), or 1.0 everywhere when ``implicit``.

Randomness is drawn from generators seeded with ``(seed, stream, block...)``: the same
arguments give the same store, and each block is generated without the others.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

# generator streams, one per kind of draw
_POPULARITY, _ACTIVITY, _USER_FACTORS, _ITEM_FACTORS, _ENTRIES, _NOISE = range(6)
_SLICE = 1 << 16


class PlantedBlocks:
    """The row-major blocks of a planted matrix, generated on demand.

    Memory: the popularity vector (8 B per item) plus one row block's activities and
    factors, one column block's factors and one block's entries.
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
        self.scale = _calibrate(self.shape, float(nnz_target), self.mean_activity,
                                self.activity_sigma, self.popularity)
        self._row_cache = (None, None, None)

    def _rng(self, *key):
        return np.random.default_rng([self.seed, *key])

    def _span(self, axis, b):
        start = b * self.chunks[axis]
        return start, min(self.shape[axis], start + self.chunks[axis])

    def _row_block(self, i):
        if self._row_cache[0] != i:
            start, stop = self._span(0, i)
            sigma = self.activity_sigma
            mu = np.log(self.mean_activity) - sigma**2 / 2
            activity = self._rng(_ACTIVITY, i).lognormal(mu, sigma, size=stop - start)
            factors = self._rng(_USER_FACTORS, i).standard_normal((stop - start, self.rank))
            self._row_cache = (i, activity, factors * self.rank**-0.25)
        return self._row_cache[1], self._row_cache[2]

    def block(self, i, j):
        """Entries of block (i, j): dict of block-local ``row``, ``col`` and ``value``."""
        activity, user_factors = self._row_block(i)
        start, stop = self._span(1, j)
        width = stop - start
        pop = self.popularity[start:stop]
        mass = float(pop.sum())
        rng = self._rng(_ENTRIES, i, j)
        counts = rng.poisson(self.scale * activity * mass)
        users = np.repeat(np.arange(activity.size, dtype=np.int64), counts)
        cdf = np.cumsum(pop)
        cdf /= cdf[-1]
        items = np.searchsorted(cdf, rng.random(users.size), side="right")
        np.minimum(items, width - 1, out=items)
        # unique (user, item) keys come back sorted: row-major order, no repeats
        keys = np.unique(users * width + items)
        row, col = keys // width, keys % width
        if self.implicit:
            value = np.ones(keys.size)
        else:
            item_factors = self._rng(_ITEM_FACTORS, j).standard_normal((width, self.rank))
            item_factors *= self.rank**-0.25
            value = np.empty(keys.size)
            for s in range(0, keys.size, _SLICE):  # gathered factor rows a slice at a time
                e = slice(s, s + _SLICE)
                value[e] = np.einsum("ij,ij->i", user_factors[row[e]], item_factors[col[e]])
            if self.noise:
                value += self.noise * self._rng(_NOISE, i, j).standard_normal(keys.size)
        return {"row": row, "col": col, "value": value}


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
