"""Synthetic implicit-feedback matrices with a planted low-rank structure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

__all__ = ["PlantedData", "planted_implicit", "leave_one_out"]


@dataclass
class PlantedData:
    """A generated interaction matrix and the planted factors behind it."""

    matrix: scipy.sparse.csr_matrix  # n × m, 1.0 at each interaction
    user_factors: np.ndarray  # n × rank
    item_factors: np.ndarray  # m × rank
    popularity: np.ndarray  # m, the item popularity weights used for sampling


def planted_implicit(
    n_users=20_000, n_items=5_000, *, rank=16, mean_per_user=40, popularity_exponent=0.8,
    affinity=8.0, seed=0, user_block=256,
):
    """Generate a binary implicit-feedback matrix from a planted low-rank model.

    User i interacts with ``c_i`` distinct items, ``c_i`` log-normal with mean
    ``mean_per_user`` (at least 1, at most ``n_items``). Items are drawn without
    replacement with probability ∝ ``pop_j · exp(affinity · p_i·q_j)``, where
    ``pop_j ∝ rank_j^-popularity_exponent`` (a power law over a random item order) and
    p_i, q_j are planted unit-scale factors. Users are generated in blocks of
    ``user_block`` (Gumbel top-k sampling), so memory stays at block × n_items.
    """
    rng = np.random.default_rng(seed)
    # unit-norm planted factors: p_i·q_j is a cosine in [-1, 1]
    P = rng.standard_normal((n_users, rank))
    Q = rng.standard_normal((n_items, rank))
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    popularity = (1.0 + rng.permutation(n_items)) ** (-float(popularity_exponent))
    log_pop = np.log(popularity / popularity.sum())
    sigma = 0.8
    counts = rng.lognormal(np.log(mean_per_user) - sigma**2 / 2, sigma, size=n_users)
    counts = np.clip(np.round(counts), 1, n_items).astype(np.int64)
    rows, cols = [], []
    for start in range(0, n_users, user_block):
        stop = min(n_users, start + user_block)
        keys = affinity * (P[start:stop] @ Q.T) + log_pop
        keys += rng.gumbel(size=keys.shape)
        for local, i in enumerate(range(start, stop)):
            c = counts[i]
            chosen = np.argpartition(-keys[local], c - 1)[:c]
            rows.append(np.full(c, i, dtype=np.int64))
            cols.append(np.sort(chosen))
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    matrix = scipy.sparse.csr_matrix(
        (np.ones(row.size), (row, col)), shape=(n_users, n_items)
    )
    return PlantedData(matrix, P, Q, popularity)


def leave_one_out(matrix, *, seed=0, min_interactions=2):
    """Hold out one random stored entry per row that has at least ``min_interactions``.

    Returns ``(train, test_rows, test_cols)``: the CSR matrix without the held-out
    entries, and the held-out (row, column) pairs.
    """
    csr = scipy.sparse.csr_matrix(matrix, copy=True)
    csr.sort_indices()
    rng = np.random.default_rng(seed)
    counts = np.diff(csr.indptr)
    eligible = np.flatnonzero(counts >= min_interactions)
    pick = csr.indptr[eligible] + (rng.random(eligible.size) * counts[eligible]).astype(np.int64)
    test_cols = csr.indices[pick].copy()
    keep = np.ones(csr.nnz, dtype=bool)
    keep[pick] = False
    coo = csr.tocoo()
    train = scipy.sparse.csr_matrix(
        (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=csr.shape
    )
    return train, eligible.astype(np.int64), test_cols.astype(np.int64)
