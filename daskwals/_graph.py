"""Graph builders: Gramians, initialisation and sweeps as dask graphs.

Only public dask APIs are used (``da.reduction``, ``to_delayed``, ``dask.delayed``, and
for sweeps task tuples in one ``HighLevelGraph`` layer wrapped as a ``Delayed``). The
functions here build lazy objects and compute nothing; the per-task work is in
:mod:`daskwals._blockops`. A sweep is one delayed object whose computation solves every
row block, writes the blocks to a new version of the factor in the store and sums the
blocks' loss terms and Gramians by a tree reduction; :func:`build_commit` makes the new
version current.
"""

from __future__ import annotations

import uuid

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.sizeof import sizeof

from ._blockops import Piece, base_matrix, gather_piece, solve_pieces

# Rows per random-number stream: the random initialisation of a row depends only on
# (seed, axis, row // SEED_BLOCK), never on the chunking.
SEED_BLOCK = 4096
_STREAM = {"row": 0, "col": 1}


@sizeof.register(Piece)
def _sizeof_piece(piece):
    """Bytes of a gathered piece, so that workers account for (and spill) it correctly."""
    arrays = (piece.rows, piece.cols, piece.data, piece.vg, piece.cg, piece.ew)
    return int(sum(a.nbytes for a in arrays if a is not None))


# ----------------------------------------------------------------------- Gramian
def _gram_chunk(x, axis, keepdims):
    x = np.asarray(x, dtype=np.float64)
    return x.T @ x


def _gram_combine(parts, axis, keepdims):
    return _sum_list(parts)


def _sum_list(parts):
    if isinstance(parts, np.ndarray):
        return parts
    total = None
    for p in parts:
        p = _sum_list(p) if isinstance(p, list) else p
        total = p.copy() if total is None else total + p
    return total


def gramian(factor, split_every=None):
    """XᵀX (float64, k × k) of an (n, k) dask array, by a tree reduction over row chunks."""
    if len(factor.chunks[1]) != 1:
        factor = factor.rechunk({1: -1})
    k = factor.shape[1]
    return da.reduction(
        factor,
        chunk=_gram_chunk,
        combine=_gram_combine,
        aggregate=_gram_combine,
        axis=0,
        keepdims=True,
        output_size=k,
        dtype=np.float64,
        split_every=split_every,
        concatenate=False,
        meta=np.empty((0, 0), dtype=np.float64),
        name="daskwals-gramian",
    )


def tree_sum(parts, split_every=None):
    """Sum a list of delayed values (arrays or tuples of arrays) by a tree of delayed adds."""
    return _tree(list(parts), split_every,
                 lambda level, index, group: dask.delayed(_add_all, pure=True)(*group))


def _tree(parts, split_every, node):
    """Reduce ``parts`` by ``node(level, index, group)`` over groups of ``split_every``."""
    split_every = max(2, int(split_every or 8))
    if not parts:
        raise ValueError("nothing to sum")
    level = 0
    while len(parts) > 1:
        parts = [node(level, i // split_every, parts[i : i + split_every])
                 for i in range(0, len(parts), split_every)]
        level += 1
    return parts[0]


def _add_all(*values):
    first = values[0]
    if isinstance(first, tuple):
        return tuple(_add_all(*items) for items in zip(*values))
    total = np.array(first, dtype=np.float64, copy=True)
    for v in values[1:]:
        total += v
    return total


# ------------------------------------------------------------------- random init
def random_rows(seed, axis, start, stop, k):
    """Rows ``start:stop`` of a chunk-independent N(0, 1) (·, k) matrix for ``axis``."""
    out = np.empty((stop - start, k))
    for unit in range(start // SEED_BLOCK, (stop - 1) // SEED_BLOCK + 1 if stop > start else 0):
        block = np.random.default_rng([seed, _STREAM[axis], unit]).standard_normal((SEED_BLOCK, k))
        lo, hi = max(start, unit * SEED_BLOCK), min(stop, (unit + 1) * SEED_BLOCK)
        out[lo - start : hi - start] = block[lo - unit * SEED_BLOCK : hi - unit * SEED_BLOCK]
    return out


def _init_task(out, start, stop, seed, axis, values):
    x = random_rows(seed, axis, start, stop, out.shape[1]) if values is None else values
    x = np.asarray(x).astype(out.dtype, copy=False)
    out[start:stop] = x
    x64 = x.astype(np.float64)
    return x64.T @ x64


def build_init(store, axis, *, seed, values=None, split_every=None):
    """Delayed ``(axis, name, gramian)``: an initial factor written to a new version.

    ``values`` None draws N(0, 1) entries from ``seed``; otherwise it is an (n, k)
    array (or dask array) written as given. Pass the result to :func:`build_commit`.
    """
    name, out = store.new_factor(axis)
    chunk, n = store.chunk(axis), store.length(axis)
    grams = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = None if values is None else values[start:stop]
        grams.append(dask.delayed(_init_task, pure=False)(out, start, stop, seed, axis, part))
    return dask.delayed(tuple, pure=True)([axis, name, tree_sum(grams, split_every)])


# ------------------------------------------------------------------------ sweeps
# Gather groups: a sweep's gather tasks each serve a group of consecutive column blocks,
# holding the fixed factor's rows of that group (at most about GROUP_BYTES of float64)
# and never the whole factor when there are at least two column blocks.
GROUP_BYTES = 32 * 2**20
MIN_GROUPS = 4


def column_groups(col_chunks, k, blocks_per_group=None):
    """Consecutive column-block ranges ``[(j0, j1), ...]`` served by one gather task each.

    By default: at least ``min(MIN_GROUPS, n_blocks)`` groups and at most about
    ``GROUP_BYTES`` of float64 factor rows (rank ``k``) per group, within one block.
    """
    n = len(col_chunks)
    if blocks_per_group is None:
        width = max(col_chunks) if n else 1
        by_bytes = max(1, GROUP_BYTES // (8 * max(1, k) * width))
        blocks_per_group = max(1, min(by_bytes, -(-n // min(MIN_GROUPS, max(n, 1)))))
    blocks_per_group = int(blocks_per_group)
    if blocks_per_group < 1:
        raise ValueError(f"blocks_per_group must be ≥ 1; got {blocks_per_group}")
    return [(j0, min(n, j0 + blocks_per_group)) for j0 in range(0, n, blocks_per_group)]


def _gather_task(spec, factor, fixed_weights, entry_weights=None):
    cw = np.ones(factor.shape[0]) if fixed_weights is None else fixed_weights
    return gather_piece(spec, factor, cw, entry_weights)


def _solve_task(pieces, n_rows, weights, base, out, start, w0, dtype, solve_empty, context,
                options=None, previous=None):
    r = np.zeros(n_rows) if weights is None else weights
    x, sums, gram = solve_pieces(
        pieces, n_rows, r, base, w0, dtype=dtype, solve_empty=solve_empty,
        row_offset=start, context=context, previous=previous, **(options or {}),
    )
    out[start : start + n_rows] = x
    return sums, gram


def _gather_solve_task(specs, factors, fixed_weights, entry_weights, *args):
    pieces = [_gather_task(b, f, fw, ew)
              for b, f, fw, ew in zip(specs, factors, fixed_weights, entry_weights)]
    return _solve_task(pieces, *args)


class _Layer:
    """A sweep's tasks as one graph layer in dask's task-tuple format.

    Each ``dask.delayed`` call re-optimises the graphs of its collection arguments, so
    a sweep built of one delayed call per task costs the client time proportional to
    (tasks × the factor's chunks): minutes for a few thousand blocks. Here every task
    is a tuple added to one dict, the collections it reads are declared once, and the
    result is a single :class:`dask.delayed.Delayed`.
    """

    def __init__(self):
        self.token = uuid.uuid4().hex
        self.dsk = {}
        self.collections = {}

    def add(self, func, *args, index=None):
        """A task ``func(*args)``; its key is named after ``func``."""
        key = (f"{func.__name__}-{self.token}", *(index if index is not None
                                                  else (len(self.dsk),)))
        self.dsk[key] = (func, *args)
        return key

    def ref(self, obj):
        """``obj`` as a task argument: a key for a one-chunk dask value, else the literal."""
        if isinstance(obj, Delayed):
            self.collections[id(obj)] = obj
            return obj.key
        if isinstance(obj, da.Array):
            if obj.npartitions != 1:
                obj = obj.rechunk(-1)
            self.collections[id(obj)] = obj
            return obj.__dask_keys__()[0][0] if obj.ndim == 2 else obj.__dask_keys__()[0]
        return obj

    def keys(self, array):
        """The chunk keys of a dask array, nested like its blocks."""
        self.collections[id(array)] = array
        return array.__dask_keys__()

    def row_keys(self, array):
        """The chunk keys of a dask array chunked along its first axis only."""
        keys = self.keys(array)
        return [k[0] for k in keys] if array.ndim == 2 else keys

    def delayed(self, key):
        name = f"daskwals-sweep-{self.token}"
        graph = HighLevelGraph.from_collections(name, self.dsk,
                                                dependencies=list(self.collections.values()))
        return Delayed(key, graph, layer=name)

    def tree_sum(self, keys, split_every=None):
        return _tree(keys, split_every, lambda level, index, group: self.add(
            _add_all, *group, index=(level, index)))


class _GroupedRatings:
    """The units of a sweep's gathers: row block i × column group g of some ratings.

    A unit is a ``BlockRange`` of the ratings store when the ratings were opened from
    one (read by the gather task itself), else a task merging the dask blocks of the
    group; a single block stands alone.
    """

    def __init__(self, ratings, groups, layer):
        self.source = getattr(ratings, "source", None)
        self.keys = None if self.source is not None else layer.keys(ratings.rows)
        self.groups = groups
        widths = ratings.rows.chunks[1]
        self.starts = [np.concatenate([[0], np.cumsum(widths[j0 : j1 - 1])]).astype(np.int64)
                       for j0, j1 in groups]

    def unit(self, i, g):
        j0, j1 = self.groups[g]
        if self.source is not None:
            return self.source.block_range(i, j0, j1)
        if j1 - j0 == 1:
            return self.keys[i][j0]
        return (tuple, [list(self.keys[i][j0:j1]), self.starts[g]])


def _entry_weight_units(entry_weights, ratings, groups, layer):
    """Per-(row block, group) entry-weight specs: the function itself, or weight units."""
    if entry_weights is None or callable(entry_weights):
        return lambda i, g: entry_weights
    if entry_weights.rows.chunks != ratings.rows.chunks:
        raise ValueError(
            f"entry_weights are chunked in {entry_weights.rows.numblocks} blocks, the "
            f"ratings in {ratings.rows.numblocks}; give them the ratings' chunking"
        )
    return _GroupedRatings(entry_weights, groups, layer).unit


def build_sweep(
    store, ratings, axis, *, unobserved_weight, regularization, fixed_gram, split_every=None,
    als=False, final=False, cache_factors=True, entry_weights=None, solver="cholesky",
    cg_steps=3, frequency=False, other_frequency_norm=None, blocks_per_group=None,
):
    """Delayed ``{"update": (axis, name, gramian), "sums": ..., "loss": ...}``: a full sweep.

    Solves every ``axis`` factor row into a new version of the factor (not yet current:
    pass the result to :func:`build_commit`). ``ratings`` is oriented so that its rows
    are the rows being solved (pass ``ratings.T`` for the column sweep). ``fixed_gram``
    is the other factor's Gramian, a NumPy array or a lazy dask/delayed value. When
    ``final`` is true the full objective at the new values is evaluated too.
    ``entry_weights`` (a function of the values, or a Ratings with the same pattern and
    orientation as ``ratings``) multiplies R_i C_j entry by entry. ``solver="cg"``
    takes ``cg_steps`` conjugate-gradient steps from the current factor rows;
    ``frequency`` scales λ by each row's stored entries (ALS-WR), in which case the
    final objective needs the other factor's Σ n_j ‖x_j‖² (``other_frequency_norm``).

    The column blocks are served in groups (:func:`column_groups`; ``blocks_per_group``
    overrides the default): the fixed factor and its weights are read from zarr once per
    sweep and concatenated per group. With ``cache_factors`` every row-block task
    receives every group (the whole fixed factor, kept in worker memory) and reads its
    own ratings. Without it no task holds the whole factor: one task per (row block,
    group) reads that unit's ratings and gathers, from the group's factor rows, only the
    rows its stored entries touch; the row-block task concatenates those pieces. Ratings
    opened from a store are read by these tasks directly, a row block's group being one
    contiguous range on disk. Both modes, and every grouping, give the same numbers.
    """
    other = "col" if axis == "row" else "row"
    X = ratings.rows
    if X.chunks[0][0] != store.chunk(axis) or X.chunks[1][0] != store.chunk(other):
        raise ValueError(
            f"ratings blocks {X.chunks[0][0]}×{X.chunks[1][0]} do not match the store's factor "
            f"chunks {store.chunk(axis)} and {store.chunk(other)}"
        )
    layer = _Layer()
    groups = column_groups(X.chunks[1], store.n_components, blocks_per_group)
    sizes = tuple(int(sum(X.chunks[1][j0:j1])) for j0, j1 in groups)
    fixed = store.factor(other)
    if fixed.chunks[0] != sizes:
        fixed = fixed.rechunk({0: sizes})
    fixed_blocks = layer.row_keys(fixed)
    n_blocks = len(X.chunks[0])
    if als:
        fixed_w = [None] * len(groups)
        own_w = [None] * n_blocks
    else:
        weights = store.weights(other)
        if weights.chunks[0] != sizes:
            weights = weights.rechunk({0: sizes})
        fixed_w = layer.row_keys(weights)
        own_w = layer.row_keys(store.weights(axis))
    w0 = float(unobserved_weight)
    lam = float(regularization or 0.0)
    gram = layer.ref(fixed_gram)
    base = layer.add(base_matrix, gram, w0, 0.0 if frequency else lam)
    options = {"solver": solver, "cg_steps": cg_steps,
               "ridge_lambda": lam if frequency else None}
    own_blocks = layer.row_keys(store.factor(axis)) if solver == "cg" else [None] * n_blocks
    name, out = store.new_factor(axis)
    context = {"axis": axis, "regularization": regularization, "unobserved_weight": w0}
    units = _GroupedRatings(ratings, groups, layer)
    ew_unit = _entry_weight_units(entry_weights, ratings, groups, layer)
    results = []
    for i in range(n_blocks):
        start = i * store.chunk(axis)
        args = (X.chunks[0][i], own_w[i], base, out, start, w0, store.dtype, True, context,
                options, own_blocks[i])
        specs = [units.unit(i, g) for g in range(len(groups))]
        ews = [ew_unit(i, g) for g in range(len(groups))]
        if cache_factors:
            results.append(layer.add(_gather_solve_task, specs, fixed_blocks, fixed_w, ews,
                                     *args, index=(i,)))
        else:
            pieces = [layer.add(_gather_task, specs[g], fixed_blocks[g], fixed_w[g], ews[g],
                                index=(i, g))
                      for g in range(len(groups))]
            results.append(layer.add(_solve_task, pieces, *args, index=(i,)))
    total = layer.tree_sum(results, split_every)
    result = layer.add(_finish_sweep, axis, name, total, gram, w0, lam, bool(final),
                       other_frequency_norm if frequency else None, index=())
    return layer.delayed(result)


def _finish_sweep(axis, name, total, fixed_gram, w0, lam, final, other_frequency_norm):
    sums, gram = total
    loss = full_loss(sums, gram, fixed_gram, w0, lam, other_frequency_norm) if final else None
    return {"update": (axis, name, gram), "sums": sums, "loss": loss}


def full_loss(sums, gram, other_gram, w0, lam, other_frequency_norm=None):
    """The full objective from a sweep's sparse sums and both Gramians (DESIGN.md §1).

    With ``other_frequency_norm`` the regulariser is ALS-WR's λ(Σ n_i‖u_i‖² + Σ m_j‖v_j‖²),
    this sweep's part being ``sums[4]``.
    """
    sparse_term = w0 * (sums[0] - sums[1]) + sums[2]
    dense_term = w0 * float(np.sum(np.asarray(gram) * np.asarray(other_gram)))
    if other_frequency_norm is not None:
        reg = lam * (float(sums[4]) + float(other_frequency_norm))
    else:
        reg = lam * (float(np.trace(gram)) + float(np.trace(other_gram)))
    return float(sparse_term + dense_term + reg)


def build_commit(store, updates, *, sweeps=0, loss=None):
    """Delayed: make the written ``updates`` current in one atomic step (one task)."""
    return dask.delayed(_commit, pure=False)(store, updates, sweeps, loss)


def _commit(store, updates, sweeps, loss):
    return store.commit(updates, sweeps=sweeps, loss=loss)


# ------------------------------------------------------------------- projections
def _project_task(blocks, factors, fixed_weights, n_rows, weights, base, w0, dtype, context,
                  entry_weights=None):
    pieces = [_gather_task(b, f, fw, entry_weights)
              for b, f, fw in zip(blocks, factors, fixed_weights)]
    r = np.zeros(n_rows) if weights is None else weights
    x, _, _ = solve_pieces(pieces, n_rows, r, base, w0, dtype=dtype, solve_empty=True,
                           context=context)
    return x


def build_projection(store, ratings, axis, *, weights, unobserved_weight, regularization,
                     als=False, entry_weights=None):
    """Lazy (q, k) array: the exact ``axis`` factor rows of new rows, other factor fixed.

    ``ratings`` holds q new rows (users for axis='row') against all of the other axis,
    chunked along it like the store; ``weights`` (q,) are their row weights (ignored in
    ALS mode). Nothing is written to the store: this is fold-in (TF's projection).
    """
    other = "col" if axis == "row" else "row"
    X = ratings.rows
    if X.chunks[1][0] != store.chunk(other):
        raise ValueError(
            f"ratings column blocks ({X.chunks[1][0]}) must equal the store's {other} chunks "
            f"({store.chunk(other)})"
        )
    fixed = store.factor(other)
    fixed_blocks = [b[0] for b in fixed.to_delayed()]
    fixed_w = [None] * len(fixed_blocks) if als else list(store.weights(other).to_delayed())
    w0 = float(unobserved_weight)
    base = base_matrix(store.gramian(other), w0, float(regularization or 0.0))
    context = {"axis": axis, "regularization": regularization, "unobserved_weight": w0}
    blocks = X.to_delayed()
    out, start = [], 0
    for i in range(blocks.shape[0]):
        size = X.chunks[0][i]
        w = None if als else np.asarray(weights[start : start + size], dtype=np.float64)
        task = dask.delayed(_project_task, pure=True)(
            list(blocks[i]), fixed_blocks, fixed_w, size, w, base, w0, store.dtype, context,
            entry_weights if callable(entry_weights) else None,
        )
        out.append(da.from_delayed(task, (size, store.n_components), dtype=store.dtype))
        start += size
    return da.concatenate(out)


def _replace_rows_task(current, out, start, local, values):
    block = np.array(current, copy=True)
    block[local] = values
    out[start : start + block.shape[0]] = block
    x = block.astype(np.float64)
    return x.T @ x


def build_row_refresh(store, axis, positions, values, split_every=None):
    """Delayed ``(axis, name, gramian)``: a new factor version with ``positions`` replaced."""
    name, out = store.new_factor(axis)
    chunk = store.chunk(axis)
    current = store.factor(axis)
    grams = []
    for i, block in enumerate(current.to_delayed()[:, 0]):
        start = i * chunk
        sel = (positions >= start) & (positions < start + current.chunks[0][i])
        grams.append(dask.delayed(_replace_rows_task, pure=False)(
            block, out, start, positions[sel] - start, values[sel]))
    return dask.delayed(tuple, pure=True)([axis, name, tree_sum(grams, split_every)])
