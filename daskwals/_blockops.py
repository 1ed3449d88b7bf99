"""Per-task block operations: turn sparse ratings blocks and factor blocks into kernel calls.

Everything here runs inside one dask task and has no dask import. A *row block* of
the matrix being solved for arrives as a list of ``sparse.COO`` pieces, one per column
block, whose coordinates are local to the piece. Each piece is reduced to the factor
rows its entries touch ("gathered" rows); the pieces are then stacked for the kernels
(see :mod:`daskwals._kernels`), never merged row by row and never summed as per-row
k × k partials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels


class SingularSystemError(ValueError):
    """A row's normal equations are singular, so its factor has no unique solution."""


@dataclass
class Piece:
    """One column block's share of a row block, reduced to the factor rows it needs."""

    rows: np.ndarray  # int64 (nnz,), block-local row of each entry, non-decreasing
    cols: np.ndarray  # int64 (nnz,), position of each entry's factor row in ``vg``
    data: np.ndarray  # float64 (nnz,)
    vg: np.ndarray  # float32 or float64 (q, k), gathered factor rows, in the factor's type
    cg: np.ndarray  # float64 (q,), gathered column weights
    ew: np.ndarray | None = None  # float64 (nnz,) per-entry weight multipliers


def coo_parts(block):
    """Row-sorted ``(rows, cols, data)`` of a 2-d sparse block (any ``sparse`` format)."""
    if hasattr(block, "tocoo") and not hasattr(block, "coords"):
        block = block.tocoo()
    rows = np.asarray(block.coords[0], dtype=np.int64)
    cols = np.asarray(block.coords[1], dtype=np.int64)
    data = np.asarray(block.data, dtype=np.float64)
    if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
        order = np.argsort(rows, kind="stable")
        rows, cols, data = rows[order], cols[order], data[order]
    return rows, cols, data


def merge_blocks(blocks, col_starts):
    """Row-sorted ``(rows, cols, data)`` of side-by-side blocks of one row block.

    ``blocks`` are consecutive column blocks (sparse), ``col_starts`` the first column of
    each in the merged block. Entries of a row keep the order (block, column).
    """
    if len(blocks) == 1:
        rows, cols, data = coo_parts(blocks[0])
        return rows, cols + int(col_starts[0]), data
    parts = [coo_parts(b) for b in blocks]
    return merge_by_row(np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] + int(s) for p, s in zip(parts, col_starts)]),
                        np.concatenate([p[2] for p in parts]), blocks[0].shape[0])


def merge_by_row(rows, cols, data, n_rows):
    """Row-major-sorted int64 ``(rows, cols)`` and float64 ``data`` of concatenated
    row-sorted blocks, keeping each row's entries in block order.

    A stable sort on the row: a linear-time radix sort when the rows fit 16 bits
    (NumPy sorts 16-bit integers that way), else a merge sort.
    """
    key = rows.astype(np.uint16) if n_rows <= 1 << 16 else rows
    order = np.argsort(key, kind="stable")
    return (rows[order].astype(np.int64, copy=False), cols[order].astype(np.int64, copy=False),
            data[order].astype(np.float64, copy=False))


def load_entries(spec):
    """Row-sorted ``(rows, cols, data)`` of a sweep's unit of ratings.

    ``spec`` is a sparse block, ``(blocks, col_starts)`` (see :func:`merge_blocks`) or an
    object with a ``load()`` method returning the triplets (a range of a ratings store).
    """
    if hasattr(spec, "load"):
        return spec.load()
    if isinstance(spec, tuple):
        return merge_blocks(*spec)
    return coo_parts(spec)


def base_matrix(fixed_gram, w0, lam):
    """W0·G + λI, the part of every row's normal equations shared by the sweep (λ None: 0)."""
    k = fixed_gram.shape[0]
    base = w0 * np.asarray(fixed_gram, dtype=np.float64)
    if lam:
        base = base + lam * np.eye(k)
    return np.ascontiguousarray(base)


def gather_piece(block, factor, col_weights, entry_weights=None):
    """Reduce one sparse ratings block to a :class:`Piece`.

    ``block`` is anything :func:`load_entries` reads. ``factor`` holds the fixed factor's
    rows for the block's columns (its row count equals the block's column count); only
    the rows that stored entries touch are kept. ``entry_weights`` is None, weights with
    the same stored pattern (in any form :func:`load_entries` reads), or a function of
    the block's values returning one weight multiplier per entry.
    """
    rows, cols, data = load_entries(block)
    used = np.zeros(factor.shape[0], dtype=bool)
    used[cols] = True
    keep = np.flatnonzero(used)
    remap = np.cumsum(used, dtype=np.int64) - 1
    return Piece(
        rows=rows,
        cols=remap[cols],
        data=data,
        # float32 factors stay float32: the kernels widen each element exactly as they use
        # it (the same numbers; the CG path's fast-math loops may round differently in
        # the last bit), and a gathered row costs half the memory
        vg=np.ascontiguousarray(factor[keep], dtype=_gathered_dtype(factor)),
        cg=np.asarray(col_weights, dtype=np.float64)[keep],
        ew=None if entry_weights is None else _entry_weights(entry_weights, rows, cols, data),
    )


def _gathered_dtype(factor):
    dtype = np.asarray(factor[:0]).dtype
    return dtype if dtype in (np.float32, np.float64) else np.float64


def _entry_weights(spec, rows, cols, data):
    """Per-entry weight multipliers aligned with (rows, cols), checked finite and ≥ 0."""
    if callable(spec):
        ew = np.asarray(spec(data.copy()), dtype=np.float64)
        if ew.shape != data.shape:
            raise ValueError(
                f"entry_weights(values) must return one weight per value; got shape "
                f"{ew.shape} for {data.shape[0]} values"
            )
    else:
        r, c, ew = load_entries(spec)
        if r.shape != rows.shape or np.any(r != rows) or np.any(c != cols):
            raise ValueError(
                "entry_weights must store exactly the ratings' entries (the same pattern); "
                f"a block has {r.size} weights for {rows.size} ratings. Build the weights "
                "from the ratings' own coordinates, or pass a function of the values."
            )
    bad = np.flatnonzero(~np.isfinite(ew) | (ew < 0))
    if bad.size:
        raise ValueError(
            f"entry_weights must be finite and ≥ 0; {bad.size} are not, the first is "
            f"{ew[bad[0]]} (rating {data[bad[0]]}). Clip or transform them, e.g. "
            "lambda r: alpha * np.log1p(r)."
        )
    return ew


def stack_pieces(pieces, n_rows):
    """Stack pieces into the kernels' layout: (indptr, indices, data, ew, cg, vg)."""
    k = pieces[0].vg.shape[1] if pieces else 0
    indptr = np.empty((len(pieces), n_rows + 1), dtype=np.int64)
    nnz_offset = 0
    col_offset = 0
    indices, data, ews, cgs, vgs = [], [], [], [], []
    any_ew = any(p.ew is not None for p in pieces)
    for j, p in enumerate(pieces):
        indptr[j] = np.searchsorted(p.rows, np.arange(n_rows + 1)) + nnz_offset
        indices.append(p.cols + col_offset)
        data.append(p.data)
        if any_ew:
            ews.append(p.ew if p.ew is not None else np.ones(p.data.shape[0]))
        cgs.append(p.cg)
        vgs.append(p.vg)
        nnz_offset += p.data.shape[0]
        col_offset += p.vg.shape[0]

    def cat(parts, shape_tail=()):
        if parts:
            return np.ascontiguousarray(np.concatenate(parts))
        return np.zeros((0, *shape_tail))

    return (
        indptr,
        cat(indices).astype(np.int64),
        cat(data),
        cat(ews) if any_ew else np.zeros(0),
        cat(cgs),
        cat(vgs, (k,)).reshape(-1, k),
    )


def solve_pieces(
    pieces,
    n_rows,
    row_weights,
    base,
    w0,
    *,
    dtype,
    solve_empty=True,
    previous=None,
    row_offset=0,
    context=None,
    solver="cholesky",
    cg_steps=3,
    ridge_lambda=None,
):
    """Solve one row block and return ``(x, loss_sums, gramian)``.

    ``x`` (n_rows, k) is in ``dtype``; rows without stored entries are zero when
    ``solve_empty`` is true and are copied from ``previous`` otherwise. ``loss_sums``
    are the block's :func:`daskwals._kernels.loss_block` sums at the new (stored
    precision) values followed by Σ_i n_i ‖x_i‖² (n_i: the row's stored entries, for
    the frequency-scaled regulariser), and ``gramian`` is xᵀx in float64.

    ``solver="cg"`` takes ``cg_steps`` conjugate-gradient steps warm-started from
    ``previous`` (approximate); ``ridge_lambda`` adds λ·n_i to row i's diagonal
    (Spark's ALS-WR), with ``base`` then built without λI.
    """
    k = base.shape[0]
    indptr, indices, data, ew, cg, vg = stack_pieces(pieces, n_rows)
    if vg.shape[0] == 0:
        vg = np.zeros((0, k))
    r = np.ascontiguousarray(row_weights, dtype=np.float64)
    if previous is not None:
        x = np.array(previous, dtype=np.float64, order="C")
    else:
        x = np.zeros((n_rows, k))
    counts = _kernels.row_counts(indptr).astype(np.float64)
    ridge = None if not ridge_lambda else float(ridge_lambda) * counts
    args = (indptr, indices, data, ew, r, cg, vg, np.ascontiguousarray(base), float(w0),
            solve_empty, x)
    if solver == "cg":
        failed, count = _kernels.cg_block(*args, steps=int(cg_steps), ridge=ridge)
    else:
        failed, count = _kernels.solve_block(*args, ridge=ridge)
    if failed >= 0:
        raise SingularSystemError(_singular_message(row_offset + failed, count, k, context or {}))
    with np.errstate(over="ignore"):  # overflow is reported just below, with its fix
        x = x.astype(dtype, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(x), axis=1))[0])
        raise FloatingPointError(
            f"the new factor of {(context or {}).get('axis', 'row')} {row_offset + bad} is not "
            f"finite (in {np.dtype(dtype).name}); the ratings or weights are too large for "
            "this precision or the system is badly conditioned. Rescale the ratings or "
            "weights, raise regularization, or use dtype='float64'. The store keeps the last "
            "complete sweep."
        )
    x64 = x.astype(np.float64, copy=False)
    sums = _kernels.loss_block(indptr, indices, data, ew, r, cg, np.ascontiguousarray(x64), vg)
    sums = np.append(sums, counts @ np.einsum("ij,ij->i", x64, x64))
    return x, sums, x64.T @ x64


def _singular_message(index, count, k, context):
    what = context.get("axis", "row")
    lam = context.get("regularization")
    w0 = context.get("unobserved_weight")
    return (
        f"The normal equations of {what} {index} are singular: it has {count} stored "
        f"entries for n_components={k}, with regularization={lam!r} and "
        f"unobserved_weight={w0!r}, so its factor is not determined. Set "
        f"regularization to a positive value (for example 1e-3), set unobserved_weight > 0, "
        f"or remove {what}s with fewer than n_components stored entries."
    )
