"""Top-k queries on fitted factors: recommendations and similar rows or columns.

Every query is a top-k reduction over the column factor's row blocks (the item
blocks): one task scores a batch of queries against one block and keeps each query's
best N, and partial results are merged by a tree of tasks (:func:`daskwals._topk.merge_topk`),
the way ``dask.array.argtopk`` works. The queries × items score matrix is never formed;
one batch × block of it exists at a time.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import scipy.sparse

from . import _topk
from ._blockops import coo_parts

__all__ = ["rows_csr", "topk", "topk_all_rows"]


def _merge_tree(parts, n, split_every):
    split_every = max(2, int(split_every or 8))
    while len(parts) > 1:
        parts = [
            dask.delayed(_topk.merge_topk, pure=True)(n, *parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def _score_block(queries, items, offset, n, exclude, allowed, cosine):
    items = np.asarray(items, dtype=np.float64)
    if cosine:
        norms = np.linalg.norm(items, axis=1)
        items = items / np.where(norms > 0, norms, 1.0)[:, None]
    scores = np.asarray(queries, dtype=np.float64) @ items.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    if exclude is not None:
        if scipy.sparse.issparse(exclude):
            coo = exclude.tocoo()
            scores[coo.row, coo.col] = -np.inf
        else:  # a sparse.COO ratings block: rows local to the queries
            r, c, _ = coo_parts(exclude)
            scores[r, c] = -np.inf
    return _topk._select(scores, np.arange(offset, offset + scores.shape[1]), n)


def topk(queries, items, n, *, exclude=None, allowed=None, cosine=False, split_every=None):
    """Delayed ``(ids, scores)``: each query row's best ``n`` rows of ``items``.

    Parameters
    ----------
    queries : ndarray (q, k)
        Query vectors (user factors, or normalised item factors for cosine similarity).
    items : dask.array.Array (m, k)
        The factor to rank, chunked by row blocks; one task per block.
    n : int
        How many to keep.
    exclude : scipy.sparse matrix (q, m), optional
        Stored entries are never returned (already-liked items, the query itself).
    allowed : ndarray of bool (m,), optional
        Only these columns may be returned.
    cosine : bool
        Divide each item row by its norm (the queries are normalised by the caller).
    """
    offsets = np.concatenate([[0], np.cumsum(items.chunks[0])])
    exclude = None if exclude is None else scipy.sparse.csr_matrix(exclude)
    parts = []
    for j, block in enumerate(items.to_delayed()[:, 0]):
        lo, hi = offsets[j], offsets[j + 1]
        ex = None if exclude is None else exclude[:, lo:hi]
        al = None if allowed is None else allowed[lo:hi]
        parts.append(dask.delayed(_score_block, pure=True)(queries, block, lo, n, ex, al, cosine))
    return _merge_tree(parts, n, split_every)


def topk_all_rows(rows_factor, items, n, *, ratings=None, allowed=None, split_every=None):
    """Lazy ``(ids, scores)`` dask arrays (n_rows, n): the top ``n`` for *every* row.

    One task per (row block, item block) pair scores that block pair and, with
    ``ratings`` (a :class:`~daskwals.Ratings` chunked like the factors), excludes the
    pair's stored entries straight from the ratings block; a tree merges over item
    blocks. Memory per task is row-block × item-block scores.
    """
    offsets = np.concatenate([[0], np.cumsum(items.chunks[0])])
    item_blocks = items.to_delayed()[:, 0]
    row_blocks = rows_factor.to_delayed()[:, 0]
    rating_blocks = None if ratings is None else ratings.rows.to_delayed()
    if ratings is not None and (
        ratings.chunks[0] != rows_factor.chunks[0] or ratings.chunks[1] != items.chunks[0]
    ):
        raise ValueError("ratings blocks must match the factors' chunks to filter liked items")
    ids, scores = [], []
    for i, rows in enumerate(row_blocks):
        parts = []
        for j, block in enumerate(item_blocks):
            lo, hi = offsets[j], offsets[j + 1]
            ex = None if rating_blocks is None else rating_blocks[i, j]
            al = None if allowed is None else allowed[lo:hi]
            parts.append(dask.delayed(_score_block, pure=True)(rows, block, lo, n, ex, al, False))
        merged = _merge_tree(parts, n, split_every)
        size = rows_factor.chunks[0][i]
        width = min(n, items.shape[0])
        ids.append(da.from_delayed(merged[0], (size, width), dtype=np.int64))
        scores.append(da.from_delayed(merged[1], (size, width), dtype=np.float64))
    return da.concatenate(ids), da.concatenate(scores)


def rows_csr(ratings, rows):
    """The stored entries of ``rows`` (global indices, any order, repeats allowed) as CSR."""
    chunk = ratings.chunks[0][0]
    blocks = ratings.rows.to_delayed()
    col_offsets = np.concatenate([[0], np.cumsum(ratings.chunks[1])])
    unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    parts = []
    for b in np.unique(unique // chunk):
        local = unique[unique // chunk == b] - b * chunk
        parts.append(dask.delayed(_select_rows, pure=True)(list(blocks[b]), local, col_offsets))
    if not parts:
        return scipy.sparse.csr_matrix((0, ratings.shape[1]))
    stacked = scipy.sparse.vstack(dask.compute(*parts), format="csr")
    return stacked[inverse]


def _select_rows(blocks, local_rows, col_offsets):
    out_r, out_c = [], []
    position = np.full(blocks[0].shape[0], -1, dtype=np.int64)
    position[local_rows] = np.arange(len(local_rows))
    for j, block in enumerate(blocks):
        r, c, _ = coo_parts(block)
        pos = position[r]
        keep = pos >= 0
        out_r.append(pos[keep])
        out_c.append(c[keep] + col_offsets[j])
    r = np.concatenate(out_r)
    c = np.concatenate(out_c)
    return scipy.sparse.csr_matrix(
        (np.ones(r.size), (r, c)), shape=(len(local_rows), int(col_offsets[-1]))
    )
