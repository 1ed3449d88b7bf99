"""Per-block top-k selection for recommendations (NumPy only, no dask).

Scores of a batch of rows against one block of items are reduced to each row's N best
(item id, score) pairs; partial results from item blocks are merged pairwise. The
full rows × items score matrix never exists, only one batch × block at a time.
"""

from __future__ import annotations

import numpy as np


def block_topk(user_rows, item_block, offset, n, exclude=None):
    """Top ``n`` items of ``item_block`` for each row of ``user_rows``.

    ``exclude`` is a scipy CSR matrix (rows × items of the block) whose stored entries
    are filtered out. Returns ``(ids, scores)``, both (rows, n'), n' = min(n, block
    size); excluded or missing positions have score -inf and id -1.
    """
    scores = np.asarray(user_rows, dtype=np.float64) @ np.asarray(item_block, np.float64).T
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    return _select(scores, np.arange(offset, offset + scores.shape[1]), n)


def _select(scores, ids, n):
    """Best ``n`` per row of ``scores`` (ids given per column, or per entry), sorted."""
    rows, width = scores.shape
    n_keep = min(n, width)
    if n_keep == 0:
        return np.empty((rows, 0), np.int64), np.empty((rows, 0))
    if n_keep < width:
        part = np.argpartition(-scores, n_keep - 1, axis=1)[:, :n_keep]
    else:
        part = np.broadcast_to(np.arange(width), (rows, width))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    part = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    if ids.ndim == 1:
        out_ids = ids[part]
    else:
        out_ids = np.take_along_axis(ids, part, axis=1)
    out_ids = np.where(np.isfinite(top), out_ids, -1)
    return out_ids, top


def merge_topk(n, *parts):
    """Merge several ``(ids, scores)`` partial results into the best ``n`` per row."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    return _select(scores, ids, n)
