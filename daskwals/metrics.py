"""Rating and ranking metrics of a factorisation A ≈ U Vᵀ, never forming U Vᵀ.

Rating metrics (:func:`rmse`, :func:`mae`) are dask reductions over the blocks of the
held-out ratings: each block gathers the factor rows its stored entries touch. The
factors are rechunked to the test ratings' blocks (a lazy rechunk; a no-op when the
test is chunked like the model), so test and model may be chunked differently.

Ranking metrics at K (:func:`precision_at_k`, :func:`recall_at_k`, :func:`map_at_k`,
:func:`ndcg_at_k`) take recommendations already made (``WALS.recommend``) and the
held-out items, with binary relevance: every stored test entry of a user is relevant
(stored zeros included), nothing else is. They average over the users that have at
least one relevant item; users without any are left out of every mean. :func:`auc`
scores a batch of users against one block of items at a time.
"""

from __future__ import annotations

import numbers

import dask
import dask.array as da
import numpy as np
import scipy.sparse

from . import _graph
from ._validation import check_int
from .estimator import WALS
from .ratings import _sizes, as_ratings
from .recommend import rows_csr

__all__ = [
    "auc", "mae", "map_at_k", "ndcg_at_k", "precision_at_k", "ranking_report", "recall_at_k",
    "rmse",
]

# Stored entries whose predictions one task computes at a time: bounds the gathered
# (entries × k) factor rows to about 32 MiB at k = 64.
_ENTRY_BATCH = 65_536


# -------------------------------------------------------------------- factors
def _factors(model):
    """(U, V), each a NumPy or dask (n, k) array, from a fitted WALS or a pair."""
    if isinstance(model, WALS):
        if not hasattr(model, "store_"):
            raise ValueError("the WALS model is not fitted yet; call fit(X) before scoring it")
        return model.store_.factor("row"), model.store_.factor("col")
    if isinstance(model, (tuple, list)) and len(model) == 2:
        U, V = (f if isinstance(f, da.Array) else np.asarray(f, np.float64) for f in model)
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[1]:
            raise ValueError(
                f"factors must be U (n, k) and V (m, k) with the same k; got shapes {U.shape} "
                f"and {V.shape}"
            )
        return U, V
    raise TypeError(
        f"expected a fitted daskwals.WALS or a pair (U, V) of arrays; got {type(model).__name__}"
    )


def _check_shape(U, V, shape, name):
    if (U.shape[0], V.shape[0]) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(shape)} but the factors score a {U.shape[0]} × "
            f"{V.shape[0]} matrix; pass {name} with the model's rows and columns"
        )


def _blocks(X, sizes):
    """``X`` as a dask array with row chunks ``sizes`` and one chunk of components."""
    if isinstance(X, da.Array):
        return X.rechunk((tuple(sizes), -1))
    return da.from_array(X, chunks=(tuple(sizes), -1))


def _gather(X, index):
    """Rows ``index`` of a NumPy or dask array, as float64 NumPy."""
    rows = X[index]
    if isinstance(rows, da.Array):
        rows = rows.compute()
    return np.asarray(rows, dtype=np.float64)


# ------------------------------------------------------------- rating metrics
def _block_errors(block, u, v):
    """[[[Σ err², Σ |err|, count]]] of one ratings block, err = a_ij − u_i·v_j."""
    r = np.asarray(block.coords[0])
    c = np.asarray(block.coords[1])
    a = np.asarray(block.data, dtype=np.float64)
    sq = ab = 0.0
    for s in range(0, a.size, _ENTRY_BATCH):
        e = slice(s, s + _ENTRY_BATCH)
        ur = np.asarray(u[r[e]], dtype=np.float64)
        vc = np.asarray(v[c[e]], dtype=np.float64)
        err = a[e] - np.einsum("ij,ij->i", ur, vc)
        sq += float(err @ err)
        ab += float(np.abs(err).sum())
    return np.array([[[sq, ab, float(a.size)]]])


def _error_sums(model, test, split_every):
    U, V = _factors(model)
    test = as_ratings(test)
    _check_shape(U, V, test.shape, "test")
    parts = da.blockwise(
        _block_errors, "ijz", test.rows, "ij", _blocks(U, test.chunks[0]), "il",
        _blocks(V, test.chunks[1]), "jl", new_axes={"z": 3}, adjust_chunks={"i": 1, "j": 1},
        concatenate=True, dtype=np.float64, meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    sq, ab, count = parts.sum(axis=(0, 1), split_every=split_every).compute()
    if count == 0:
        raise ValueError("test has no stored entries; pass the held-out ratings to score")
    return sq, ab, count


def rmse(model_or_factors, test, *, split_every: int | None = None) -> float:
    """Root mean squared error on the stored entries S of ``test``.

    ``sqrt( (1/|S|) Σ_{(i,j)∈S} (a_ij − u_i·v_j)² )``, a tree reduction of per-block
    sums; each block gathers only the factor rows of its own entries.

    Parameters
    ----------
    model_or_factors : WALS or (U, V)
        A fitted :class:`daskwals.WALS` (its current factors in the store) or a pair of
        NumPy or dask arrays U (n, k) and V (m, k).
    test : Ratings or anything :func:`daskwals.as_ratings` accepts
        The held-out ratings, n × m. Its chunking need not match the model's: the
        factors are rechunked (lazily) to its blocks.
    split_every : int, optional
        Fan-in of the reduction tree.
    """
    sq, _, count = _error_sums(model_or_factors, test, split_every)
    return float(np.sqrt(sq / count))


def mae(model_or_factors, test, *, split_every: int | None = None) -> float:
    """Mean absolute error ``(1/|S|) Σ_{(i,j)∈S} |a_ij − u_i·v_j|`` on ``test``'s entries.

    Parameters are those of :func:`rmse`.
    """
    _, ab, count = _error_sums(model_or_factors, test, split_every)
    return float(ab / count)


# ------------------------------------------------------------ interaction rows
def _source(X, name):
    """A canonical binary CSR (scipy input) or a Ratings (anything else)."""
    if scipy.sparse.issparse(X):
        csr = scipy.sparse.csr_matrix(X, copy=True)
        csr.sum_duplicates()
        csr.data = np.ones_like(csr.data, dtype=np.float64)
        return csr
    try:
        return as_ratings(X)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None


def _rows_csr(source, users):
    """Stored entries of rows ``users`` as a binary canonical CSR, one row per user."""
    out = source[users] if scipy.sparse.issparse(source) else rows_csr(source, users)
    out = scipy.sparse.csr_matrix(out)
    out.sum_duplicates()
    out.data = np.ones_like(out.data)
    return out


def _row_counts(source):
    """Stored entries per row, an int64 NumPy array of length n."""
    if scipy.sparse.issparse(source):
        return np.diff(source.indptr).astype(np.int64)
    counts = da.blockwise(
        _block_row_counts, "ij", source.rows, "ij", adjust_chunks={"j": 1}, dtype=np.int64,
        meta=np.empty((0, 0), dtype=np.int64),
    )
    return counts.sum(axis=1).compute()


def _block_row_counts(block):
    return np.bincount(block.coords[0], minlength=block.shape[0]).astype(np.int64)[:, None]


def _check_users(users, n, name="users"):
    users = np.atleast_1d(np.asarray(users))
    if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-d sequence of row indices; got {users!r}")
    bad = users[(users < 0) | (users >= n)]
    if bad.size:
        raise ValueError(f"{name} must lie in [0, {n}); got {bad[0]}. Pass valid row indices.")
    return users.astype(np.int64)


# ------------------------------------------------------------- ranking metrics
def _hits(recommended, relevant, k, users):
    """(hits, n_relevant): hits[u, p] is true when the p-th recommendation is relevant."""
    rec = np.asarray(recommended)
    if rec.ndim != 2 or not np.issubdtype(rec.dtype, np.integer):
        raise ValueError(
            "recommended must be a 2-d integer array (users × K) of item ids, -1 where "
            f"missing; got shape {rec.shape} and dtype {rec.dtype}"
        )
    K = rec.shape[1]
    k = K if k is None else k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= K:
        raise ValueError(f"k must be an integer in [1, {K}] (the recommended columns); got {k!r}")
    rec = rec[:, :k].astype(np.int64)
    source = _source(relevant, "relevant")
    n, m = source.shape
    if users is None:
        if n != rec.shape[0]:
            raise ValueError(
                f"recommended has {rec.shape[0]} rows but relevant has {n}; pass users= (the "
                "relevant row of each recommended row) or relevant rows aligned with them"
            )
        users = np.arange(n)
    users = _check_users(users, n)
    if users.size != rec.shape[0]:
        raise ValueError(f"users has {users.size} entries but recommended has {rec.shape[0]} "
                         "rows; give one user per recommended row")
    bad = rec[(rec < -1) | (rec >= m)]
    if bad.size:
        raise ValueError(f"recommended ids must lie in [0, {m}) or be -1 for an empty slot; "
                         f"got {bad[0]}")
    ranked = np.sort(rec, axis=1)
    if np.any((ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)):
        raise ValueError("recommended repeats an item id within a row; ids must be unique per row")
    rel = _rows_csr(source, users)
    lens = np.diff(rel.indptr)
    keys = np.repeat(np.arange(rel.shape[0], dtype=np.int64), lens) * m + rel.indices
    query = np.arange(rec.shape[0], dtype=np.int64)[:, None] * m + rec
    if keys.size == 0:
        return np.zeros(rec.shape, dtype=bool), lens.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return (rec >= 0) & (keys[pos] == query), lens.astype(np.int64)


def _mean(per_user, n_relevant, what):
    mask = n_relevant > 0
    if not mask.any():
        raise ValueError(f"no user has a relevant item, so {what} is undefined; pass users "
                         "with held-out entries in relevant")
    return float(np.mean(per_user[mask]))


def _precision(hits, n_rel):
    return hits.sum(axis=1) / hits.shape[1]


def _recall(hits, n_rel):
    return hits.sum(axis=1) / np.maximum(n_rel, 1)


def _average_precision(hits, n_rel):
    K = hits.shape[1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, K + 1)
    return (precision_at * hits).sum(axis=1) / np.maximum(np.minimum(n_rel, K), 1)


def _ndcg(hits, n_rel):
    K = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, K + 2))
    ideal = np.concatenate([[1.0], np.cumsum(discount)])[np.minimum(n_rel, K)]
    return (hits * discount).sum(axis=1) / ideal


_RANKING = {
    "precision": _precision, "recall": _recall, "map": _average_precision, "ndcg": _ndcg,
}


def _ranking(formula, recommended, relevant, k, users):
    hits, n_rel = _hits(recommended, relevant, k, users)
    return _mean(formula(hits, n_rel), n_rel, formula.__name__.strip("_"))


def precision_at_k(recommended, relevant, k: int | None = None, *, users=None) -> float:
    """Mean precision at K: ``P@K(u) = |rec_u[:K] ∩ R_u| / K``.

    R_u is user u's relevant set. The denominator is always K, even where fewer than
    K items were recommended (empty slots count as misses).

    Parameters
    ----------
    recommended : array-like of int, (n_users, K)
        Item ids per user, best first; -1 marks an empty slot (never relevant). Ids
        must not repeat within a row.
    relevant : scipy.sparse matrix or Ratings
        The held-out interactions; the stored entries of a row are its relevant items.
    k : int, optional
        Use the first ``k`` recommendations (default: all K columns).
    users : array-like of int, optional
        The row of ``relevant`` of each recommended row; default: row u is user u.

    Returns
    -------
    float
        The mean over users with at least one relevant item.
    """
    return _ranking(_precision, recommended, relevant, k, users)


def recall_at_k(recommended, relevant, k: int | None = None, *, users=None) -> float:
    """Mean recall at K: ``R@K(u) = |rec_u[:K] ∩ R_u| / |R_u|``.

    The standard denominator |R_u| (all of the user's relevant items), not
    min(K, |R_u|): a user with more than K relevant items cannot reach 1.
    Parameters and result as in :func:`precision_at_k`.
    """
    return _ranking(_recall, recommended, relevant, k, users)


def map_at_k(recommended, relevant, k: int | None = None, *, users=None) -> float:
    """Mean average precision at K.

    ``AP@K(u) = (1 / min(K, |R_u|)) Σ_{p=1..K} P@p(u) · rel_u(p)``, where rel_u(p) is 1
    when the p-th recommendation is relevant and P@p is the precision of the first p.
    The normalisation min(K, |R_u|) makes a perfect list score 1 (the usual MAP@K).
    Parameters and result as in :func:`precision_at_k`.
    """
    return _ranking(_average_precision, recommended, relevant, k, users)


def ndcg_at_k(recommended, relevant, k: int | None = None, *, users=None) -> float:
    """Mean normalised discounted cumulative gain at K, binary relevance.

    ``DCG@K(u) = Σ_{p=1..K} rel_u(p) / log2(p + 1)`` and ``NDCG@K(u) = DCG@K(u) /
    IDCG@K(u)``, with the ideal ``IDCG@K(u) = Σ_{p=1..min(K, |R_u|)} 1 / log2(p + 1)``
    (all relevant items first). Parameters and result as in :func:`precision_at_k`.
    """
    return _ranking(_ndcg, recommended, relevant, k, users)


# ------------------------------------------------------------------------ AUC
def _auc_block(users, items, excluded, pos_indptr, pos_scores):
    """Per user of the batch, against one item block: (#neg < pos, #neg = pos, #neg).

    Pairs are counted over the user's positives (``pos_scores`` in CSR layout) and the
    block's items not in ``excluded`` (the user's train and test items).
    """
    scores = np.asarray(users, dtype=np.float64) @ np.asarray(items, dtype=np.float64).T
    ex = excluded.tocoo()
    scores[ex.row, ex.col] = np.inf  # sorted last, then cut off by n_neg below
    scores.sort(axis=1)
    n_neg = scores.shape[1] - np.diff(excluded.indptr)
    less = np.zeros(scores.shape[0])
    equal = np.zeros(scores.shape[0])
    for u in np.flatnonzero(np.diff(pos_indptr)):
        negatives = scores[u, : n_neg[u]]
        p = pos_scores[pos_indptr[u] : pos_indptr[u + 1]]
        lo = np.searchsorted(negatives, p, side="left")
        hi = np.searchsorted(negatives, p, side="right")
        less[u] = lo.sum()
        equal[u] = (hi - lo).sum()
    return less, equal, n_neg.astype(np.float64)


def auc(
    model, train, test, users=None, *, batch_size: int = 1024, item_block: int | None = None,
    split_every: int | None = None,
) -> float:
    """Mean per-user AUC of held-out items against the items the user never touched.

    For user u with positives P_u (stored test entries) and negatives N_u (items in
    neither train nor test), with scores s = u_u·v_j::

        AUC(u) = (1 / (|P_u| |N_u|)) Σ_{p∈P_u} Σ_{n∈N_u} ([s_p > s_n] + ½ [s_p = s_n])

    averaged over users with |P_u| > 0 and |N_u| > 0. Users are scored in batches of
    ``batch_size``, each against one block of V at a time (a batch × block score
    array per task, as in ``WALS.recommend``); the users × items score matrix is never
    formed.

    Parameters
    ----------
    model : WALS or (U, V)
        A fitted :class:`daskwals.WALS` or a pair of NumPy or dask factor arrays.
    train : scipy.sparse matrix, Ratings or None
        Interactions excluded from the negatives; None uses the ratings a WALS model
        was fitted on.
    test : scipy.sparse matrix or Ratings
        The held-out interactions: each user's positives.
    users : array-like of int, optional
        Users to score; default every row with a test entry.
    batch_size : int
        Users per batch.
    item_block : int, optional
        Items per block; default V's own chunks (a dask V), or 4096 (a NumPy V).
    split_every : int, optional
        Fan-in of the tree that sums the item blocks' counts.
    """
    U, V = _factors(model)
    if train is None:
        if not isinstance(model, WALS):
            raise ValueError("train is required when the model is a pair of factors")
        train = model.ratings_
    train, test = _source(train, "train"), _source(test, "test")
    _check_shape(U, V, train.shape, "train")
    _check_shape(U, V, test.shape, "test")
    batch_size = check_int("batch_size", batch_size)
    n, m = test.shape
    if users is None:
        users = np.flatnonzero(_row_counts(test) > 0)
    # sorted users: a batch then reads few row blocks of the ratings
    users = np.unique(_check_users(users, n))
    if item_block is not None:
        sizes = _sizes(m, check_int("item_block", item_block))
    elif isinstance(V, da.Array):
        sizes = V.chunks[0]
    else:
        sizes = _sizes(m, 4096)
    V_blocks = _blocks(V, sizes).to_delayed()[:, 0]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    total, count = 0.0, 0
    for s in range(0, users.size, batch_size):
        batch = users[s : s + batch_size]
        Ub = _gather(U, batch)
        positives = _rows_csr(test, batch)
        excluded = positives + _rows_csr(train, batch)
        excluded.data[:] = 1.0
        items, inverse = np.unique(positives.indices, return_inverse=True)
        owner = np.repeat(np.arange(batch.size), np.diff(positives.indptr))
        pos_scores = np.einsum("ij,ij->i", Ub[owner], _gather(V, items)[inverse])
        ub, ptr, ps = (dask.delayed(x) for x in (Ub, positives.indptr, pos_scores))
        parts = [
            dask.delayed(_auc_block, pure=True)(
                ub, V_blocks[j], excluded[:, starts[j] : starts[j + 1]], ptr, ps
            )
            for j in range(len(sizes))
        ]
        (less, equal, n_neg), = dask.compute(_graph.tree_sum(parts, split_every))
        n_pos = np.diff(positives.indptr)
        ok = (n_pos > 0) & (n_neg > 0)
        total += float(np.sum((less[ok] + 0.5 * equal[ok]) / (n_pos[ok] * n_neg[ok])))
        count += int(ok.sum())
    if count == 0:
        raise ValueError("no user has both a test item and an item outside train and test, so "
                         "AUC is undefined; pass users with held-out entries")
    return total / count


# --------------------------------------------------------------------- report
def ranking_report(
    model: WALS, train, test, K: int = 10, users=None, *, batch_size: int = 1024,
    split_every: int | None = None,
) -> dict:
    """All ranking metrics of a fitted WALS model on held-out interactions.

    Recommends like ``model.recommend(users, N=K, filter_already_liked=True)`` but on
    row and column *positions* (whatever original ids the model has), filtering the
    ratings the model was fitted on, so ``train`` should be those ratings (it is used
    for AUC's negatives; None takes them from the model).

    Parameters
    ----------
    model : WALS
        A fitted model.
    train : scipy.sparse matrix, Ratings or None
        The training interactions (default: the model's fitted ratings).
    test : scipy.sparse matrix or Ratings
        The held-out interactions.
    K : int
        Recommendations per user.
    users : array-like of int, optional
        Users to evaluate; default every row with a test entry.
    batch_size : int
        Users per batch, for recommending and for AUC.
    split_every : int, optional
        Fan-in of the reduction trees.

    Returns
    -------
    dict
        ``{"k", "n_users", "precision", "recall", "map", "ndcg", "auc"}``: the metrics
        at K as defined in :func:`precision_at_k`, :func:`recall_at_k`,
        :func:`map_at_k`, :func:`ndcg_at_k` and :func:`auc`, and the number of users
        with at least one relevant item (those the means run over).
    """
    if not isinstance(model, WALS):
        raise TypeError(f"ranking_report needs a fitted daskwals.WALS; got {type(model).__name__}")
    K = check_int("K", K)
    test = _source(test, "test")
    if users is None:
        users = np.flatnonzero(_row_counts(test) > 0)
    users = np.unique(_check_users(users, test.shape[0]))
    # positions in, positions out: the model may have original ids, the metrics work on
    # positions of the train and test matrices
    ids, _ = model._recommend_indices(np.asarray(users, dtype=np.int64), K, True,
                                      batch_size=batch_size)
    relevant = _rows_csr(test, users)
    hits, n_rel = _hits(ids, relevant, K, None)
    report = {"k": K, "n_users": int((n_rel > 0).sum())}
    for name, formula in _RANKING.items():
        report[name] = _mean(formula(hits, n_rel), n_rel, name)
    report["auc"] = auc(model, train, test, users, batch_size=batch_size, split_every=split_every)
    return report


