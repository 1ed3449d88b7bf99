"""Graph builders of :class:`daskwals.WALSModel`'s ops: init, Gramians, updates, projections.

Only public dask APIs (``dask.delayed``, ``da.from_delayed``, ``to_delayed``). Building
computes and writes nothing; the per-task work is in :mod:`daskwals._walstasks`, which
resolves the store's current versions when the tasks run (TF's ops read variables at
``sess.run`` time, so an op built once may be computed many times).

Inputs come in two kinds. *In-memory* inputs (scipy.sparse, ``sparse``) are validated
and grouped by factor chunk here, in the client, before anything is written; *lazy*
inputs (dask arrays with ``sparse`` blocks, :class:`~daskwals.Ratings`) are grouped by
block overlap and read inside the tasks, so they never pass through the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import sparse

from . import _walstasks as tasks
from ._graph import _init_task, tree_sum
from .ratings import Ratings, as_ratings

_OTHER = {"row": "col", "col": "row"}
_NAMES = {"row": ("row", "input_rows"), "col": ("column", "input_cols")}


def _delayed(func):
    # Every task here reads or writes the store, or depends on one that does: never
    # let dask merge two of them by their arguments.
    return dask.delayed(func, pure=False)


@dataclass(frozen=True)
class Spec:
    """What the graphs need to know about a model (fixed at construction)."""

    store: object
    shape: tuple  # (n_rows, n_cols)
    n_components: int
    chunks: dict  # {"row": rows per factor chunk, "col": ...}
    unobserved_weight: float
    regularization: float | None
    als: bool
    dtype: str
    use_cache: bool
    use_gramian_cache: bool
    split_every: int | None = None
    lengths: dict = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "lengths", {"row": self.shape[0], "col": self.shape[1]})

    def bounds(self, axis):
        n, c = self.lengths[axis], self.chunks[axis]
        return [(s, min(n, s + c)) for s in range(0, n, c)]

    def cfg(self, axis, what=None):
        return {
            "axis": axis, "w0": self.unobserved_weight, "lam": self.regularization,
            "als": self.als, "dtype": self.dtype, "use_cache": self.use_cache,
            "context": {"axis": what or _NAMES[axis][0], "regularization": self.regularization,
                        "unobserved_weight": self.unobserved_weight},
        }


# ---------------------------------------------------------------------- inputs
@dataclass
class Input:
    """sp_input oriented so that its rows are the rows being solved for."""

    rows: np.ndarray | None = None  # in-memory: entry arrays, in the input's order
    cols: np.ndarray | None = None
    data: np.ndarray | None = None
    array: da.Array | None = None  # lazy: a dask array with sparse.COO blocks

    @property
    def lazy(self):
        return self.array is not None


def orient(sp_input, swap, spec, axis, check_own):
    """Validate ``sp_input`` and orient it; ``swap`` transposes it.

    ``axis`` is the factor being solved for; the input's columns index the other
    factor. ``check_own`` bounds the row indices by the length of ``axis`` (updates;
    projections accept any row ids, which only group the entries).
    """
    n_own, n_fixed = spec.lengths[axis], spec.lengths[_OTHER[axis]]
    own_name, own_param = _NAMES[axis]
    fixed_name, fixed_param = _NAMES[_OTHER[axis]]
    if isinstance(sp_input, (Ratings, da.Array)):
        ratings = as_ratings(sp_input)
        array = ratings.cols if swap else ratings.rows
        rows, cols = array.shape
        if cols > n_fixed or (check_own and rows > n_own):
            limit = f"{own_param}={n_own} {own_name}s by " if check_own else ""
            raise ValueError(
                f"sp_input has {rows} {own_name}s × {cols} {fixed_name}s once oriented, more "
                f"than the model's {limit}{fixed_param}={n_fixed} {fixed_name}s; check "
                "transpose_input and the matrix shape"
            )
        return Input(array=array)
    rows, cols, data = _triplets(sp_input)
    if swap:
        rows, cols = cols, rows
    _check_index(cols, n_fixed, f"{fixed_name} index", fixed_param)
    if check_own:
        _check_index(rows, n_own, f"{own_name} index", own_param)
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        p = bad[0]
        raise ValueError(
            f"sp_input contains {bad.size} non-finite values (NaN or inf); the first is "
            f"{data[p]} at ({own_name} {rows[p]}, {fixed_name} {cols[p]}). Drop or impute them."
        )
    if rows.size:
        linear = rows * (int(cols.max()) + 1) + cols
        if np.unique(linear).size != linear.size:
            raise ValueError(
                "sp_input contains duplicate (row, column) entries; sum or deduplicate them "
                "first (for a scipy matrix: X.sum_duplicates())"
            )
    return Input(rows=rows, cols=cols, data=data)


def _triplets(sp_input):
    if scipy.sparse.issparse(sp_input):
        if sp_input.ndim != 2:
            raise ValueError(f"sp_input must be 2-d; got shape {sp_input.shape}")
        coo = sp_input.tocoo()
        rows, cols, data = coo.row, coo.col, coo.data
    elif isinstance(sp_input, sparse.SparseArray):
        if sp_input.ndim != 2:
            raise ValueError(f"sp_input must be 2-d; got a sparse array of shape {sp_input.shape}")
        if sp_input.fill_value != 0:
            raise ValueError(
                f"sp_input has fill_value={sp_input.fill_value!r}; unobserved entries must be "
                "0. Build it with fill_value=0."
            )
        coo = sp_input if isinstance(sp_input, sparse.COO) else sp_input.tocoo()
        rows, cols, data = coo.coords[0], coo.coords[1], coo.data
    else:
        raise TypeError(
            f"sp_input must be a scipy.sparse matrix, a sparse array, a dask array with sparse "
            f"blocks or a daskwals.Ratings; got {type(sp_input).__name__} (dense arrays are "
            "refused because every entry of a dense array would count as observed)"
        )
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"sp_input values must be real numbers; got dtype {data.dtype}")
    return (np.asarray(rows, np.int64), np.asarray(cols, np.int64),
            data.astype(np.float64))


def _check_index(index, size, what, param):
    bad = np.flatnonzero((index < 0) | (index >= size))
    if bad.size:
        raise ValueError(
            f"sp_input has {bad.size} entries whose {what} is outside [0, {size}) "
            f"({param}={size}); the first is {index[bad[0]]}. Check transpose_input, or "
            "build the model with the full matrix shape."
        )


# ---------------------------------------------------------------------- groups
def _memory_update_groups(inp, n_own, chunk):
    """Entries per factor chunk, and the permutation to first-appearance order."""
    uniq, first = np.unique(inp.rows, return_index=True)
    by_appearance = uniq[np.argsort(first, kind="stable")]
    order = np.searchsorted(uniq, by_appearance)
    sort = np.argsort(inp.rows, kind="stable")
    rows, cols, data = inp.rows[sort], inp.cols[sort], inp.data[sort]
    groups = {}
    for c in np.unique(uniq // chunk):
        start = int(c) * chunk
        stop = min(n_own, start + chunk)
        lo, hi = np.searchsorted(rows, [start, stop])
        groups[int(c)] = ((rows[lo:hi] - start, cols[lo:hi], data[lo:hi]), stop - start, start)
    return groups, order, uniq.size


def _memory_projection_groups(inp, batch):
    """Entries per batch of projected rows, numbered in order of first appearance."""
    uniq, first, inverse = np.unique(inp.rows, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    position = rank[np.ravel(inverse)]
    sort = np.argsort(position, kind="stable")
    position, cols, data = position[sort], inp.cols[sort], inp.data[sort]
    groups = []
    for start in range(0, uniq.size, batch):
        stop = min(uniq.size, start + batch)
        lo, hi = np.searchsorted(position, [start, stop])
        groups.append(((position[lo:hi] - start, cols[lo:hi], data[lo:hi]), stop - start, start))
    return groups


def _lazy_parts(array, start, stop):
    """(block, r0, c0) of every block of ``array`` holding rows in [start, stop)."""
    row_off = np.concatenate([[0], np.cumsum(array.chunks[0])])
    col_off = np.concatenate([[0], np.cumsum(array.chunks[1])])
    blocks = array.to_delayed()
    parts = []
    for b in range(blocks.shape[0]):
        if row_off[b] < stop and row_off[b + 1] > start:
            parts.extend(
                (blocks[b, j], int(row_off[b]), int(col_off[j])) for j in range(blocks.shape[1])
            )
    return parts


def _lazy_update_groups(array, spec, axis):
    rows = array.shape[0]
    groups = {}
    for c, (start, stop) in enumerate(spec.bounds(axis)):
        if start >= rows:
            break
        entries = _delayed(tasks.entries_from_blocks)(_lazy_parts(array, start, stop), start, stop)
        groups[c] = (entries, stop - start, start)
    return groups


def _lazy_projection_groups(array):
    groups = []
    row_off = np.concatenate([[0], np.cumsum(array.chunks[0])])
    for b in range(len(array.chunks[0])):
        start, stop = int(row_off[b]), int(row_off[b + 1])
        entries = _delayed(tasks.entries_from_blocks)(_lazy_parts(array, start, stop), start, stop)
        groups.append((entries, stop - start, start))
    return groups


# ---------------------------------------------------------------------- shared pieces
def fixed_gramian(spec, axis, ctx):
    """Delayed Gramian of the factor held fixed while ``axis`` is solved."""
    if spec.use_gramian_cache:
        return _delayed(tasks.read_gramian)(spec.store, ctx)
    name = _delayed(tasks.part)(ctx, "fixed")
    parts = [
        _delayed(tasks.gram_rows)(spec.store, name, start, stop)
        for start, stop in spec.bounds(_OTHER[axis])
    ]
    return tree_sum(parts, spec.split_every)


def _solver(spec, axis, what=None):
    ctx = _delayed(tasks.resolve)(spec.store, axis)
    gram = fixed_gramian(spec, axis, ctx)
    base = _delayed(tasks.base_matrix)(gram, spec.unobserved_weight, spec.regularization)
    cfg = spec.cfg(axis, what)

    def solve(entries, n_rows, start, override=None):
        return _delayed(tasks.solve_group)(spec.store, ctx, base, entries, n_rows, start, cfg,
                                           override)

    return ctx, gram, solve


def _stack(spec, solved, sizes, order=None):
    """A dask array of the solved rows, block after block (then ``order``)."""
    k = spec.n_components
    xs = [_delayed(tasks.part)(s, 1) for s in solved]
    if order is not None:
        total = int(sum(sizes))
        value = _delayed(tasks.assemble)(order, *xs)
        return da.from_delayed(value, shape=(total, k), dtype=spec.dtype)
    if not xs:
        return da.zeros((0, k), dtype=spec.dtype)
    blocks = [da.from_delayed(x, shape=(size, k), dtype=spec.dtype) for x, size in zip(xs, sizes)]
    return blocks[0] if len(blocks) == 1 else da.concatenate(blocks)


# ---------------------------------------------------------------------- ops
def build_update(spec, axis, inp):
    """``(new_values, update_op, unregularized_loss, regularization, sum_weights)``."""
    store = spec.store
    ctx, gram, solve = _solver(spec, axis)
    if inp.lazy:
        groups = _lazy_update_groups(inp.array, spec, axis)
        order = None
    else:
        groups, order, _ = _memory_update_groups(inp, spec.lengths[axis], spec.chunks[axis])
    solved = {c: solve(entries, n_rows, start) for c, (entries, n_rows, start) in groups.items()}
    if inp.lazy:
        new_values = _stack(spec, list(solved.values()), [math.nan] * len(solved))
    else:
        sizes = [np.unique(g[0][0]).size for g in groups.values()]
        new_values = _stack(spec, list(solved.values()), sizes, order)

    stats = tree_sum([_delayed(tasks.part)(s, 2) for s in solved.values()], spec.split_every)
    losses = _delayed(tasks.minibatch_losses)(
        stats, gram, spec.lengths[axis], spec.lengths[_OTHER[axis]], spec.unobserved_weight,
        spec.regularization,
    )
    unregularized, regularization, sum_weights = (
        _delayed(tasks.part)(losses, i) for i in range(3)
    )

    wctx = _delayed(tasks.begin_write)(store, ctx, axis)
    grams = [
        _delayed(tasks.write_chunk)(store, wctx, start, stop, solved.get(c))
        for c, (start, stop) in enumerate(spec.bounds(axis))
    ]
    update_op = _delayed(tasks.commit_update)(store, wctx, axis, tree_sum(grams, spec.split_every))
    return new_values, update_op, unregularized, regularization, sum_weights


def build_projection(spec, axis, inp, weights):
    """Lazy projected factors of the input's rows (``weights``: None, float or vector)."""
    what = f"projected {_NAMES[axis][0]}"
    _, _, solve = _solver(spec, axis, what)
    if inp.lazy:
        groups = _lazy_projection_groups(inp.array)
    else:
        groups = _memory_projection_groups(inp, spec.chunks[axis])
    overrides = [None if spec.als else weights] * len(groups)
    if not spec.als and isinstance(weights, np.ndarray):
        if inp.lazy:
            counts = [_delayed(tasks.count_present)(g[0]) for g in groups]
            starts = _delayed(tasks.offsets)(counts, weights.size)
            wd = dask.delayed(weights)
            overrides = [(wd, _delayed(tasks.part)(starts, b)) for b in range(len(groups))]
        else:
            overrides = [(weights, start) for _, _, start in groups]
    solved = [solve(e, n, start, o) for (e, n, start), o in zip(groups, overrides)]
    sizes = [math.nan if inp.lazy else n for _, n, _ in groups]
    return _stack(spec, solved, sizes)


def build_init(spec, inits, weights, seed):
    """initialize_op: weights, both initial factors and their Gramians, one commit."""
    store = spec.store
    plan = _delayed(tasks.begin_init)(store, weights["row"], weights["col"])
    grams = {}
    for axis in ("row", "col"):
        out = _delayed(tasks.open_version)(store, plan, axis)
        values = inits[axis]
        parts = [
            _delayed(_init_task)(out, start, stop, seed, axis,
                                 None if values is None else values[start:stop])
            for start, stop in spec.bounds(axis)
        ]
        grams[axis] = tree_sum(parts, spec.split_every)
    return _delayed(tasks.commit_init)(store, plan, grams["row"], grams["col"])


def build_prep_gramian(spec, axis):
    """Recompute the Gramian of ``axis``'s current factor and store it with it."""
    store = spec.store
    name = _delayed(tasks.current_name)(store, axis)
    parts = [_delayed(tasks.gram_rows)(store, name, start, stop)
             for start, stop in spec.bounds(axis)]
    return _delayed(tasks.write_gramian)(store, axis, name, tree_sum(parts, spec.split_every))


def build_warm(spec, axis, weights_only=False):
    """TF's cache-filling ops: a no-op unless use_factors_weights_cache."""
    return _delayed(tasks.warm)(spec.store, axis, spec.cfg(axis), weights_only)


def shard_views(spec, axis, sizes, reader, width):
    """One lazy array per shard, read piecewise (factor-chunk aligned) at compute time."""
    chunk = spec.chunks[axis]
    shape_tail = (width,) if width else ()
    dtype = spec.dtype if width else np.float64
    views, start = [], 0
    for size in sizes:
        stop = start + size
        pieces = []
        lo = start
        while lo < stop:
            hi = min(stop, (lo // chunk + 1) * chunk)
            value = _delayed(reader)(spec.store, axis, lo, hi)
            pieces.append(da.from_delayed(value, shape=(hi - lo, *shape_tail), dtype=dtype))
            lo = hi
        if not pieces:
            views.append(da.zeros((0, *shape_tail), dtype=dtype))
        else:
            views.append(pieces[0] if len(pieces) == 1 else da.concatenate(pieces))
        start = stop
    return views


def factor_views(spec, axis, sizes):
    return shard_views(spec, axis, sizes, tasks.read_current, spec.n_components)


def weight_views(spec, axis, sizes):
    return shard_views(spec, axis, sizes, tasks.read_weights, 0)
