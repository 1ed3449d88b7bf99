"""Per-task operations of :class:`daskwals.WALSModel`: partial updates and projections.

Everything here runs inside one dask task and has no dask import; the graphs that
call these functions are built in :mod:`daskwals._walsgraph`. TF's ops read their
variables when they run, not when they are built, so every function that touches a
factor first *resolves* the store's current versions (:func:`resolve`) at run time.

A *group* is a range of rows of the factor being solved for (a factor chunk for
updates, a batch of projected rows for projections). Its stored entries arrive as
``(rows, cols, data)``: block-local rows sorted non-decreasing, **global** indices
into the fixed factor and the values.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict

import numpy as np

from ._blockops import Piece, base_matrix, coo_parts, solve_pieces  # noqa: F401 (base_matrix used by _walsgraph)

logger = logging.getLogger(__name__)

INIT_TOKEN = "walsmodel_init_token"
_OTHER = {"row": "col", "col": "row"}


# ------------------------------------------------------------------ run-time state
def resolve(store, axis):
    """The store's current state for an update or projection of ``axis`` (a dict).

    Keys: ``own`` and ``fixed`` (current factor versions of ``axis`` and of the other
    axis), ``fixed_gram`` (the fixed factor's Gramian array) and ``token`` (changes at
    every ``initialize_op``; part of the worker-cache keys).
    """
    meta = store.meta
    current = meta["current"]
    other = _OTHER[axis]
    missing = [a for a in (axis, other) if f"{a}_factors" not in current]
    if missing:
        raise RuntimeError(
            f"the model store at {store.path!r} has no {' or '.join(missing)} factors yet; "
            "compute model.initialize_op first (dask.compute(model.initialize_op))"
        )
    return {
        "own": current[f"{axis}_factors"],
        "fixed": current[f"{other}_factors"],
        "fixed_gram": current.get(f"{other}_gramian"),
        "token": meta.get(INIT_TOKEN),
    }


def current_name(store, axis):
    """Name of the current version of ``axis``'s factor (raises if there is none)."""
    name = store.meta["current"].get(f"{axis}_factors")
    if name is None:
        raise RuntimeError(
            f"the model store at {store.path!r} has no {axis} factors yet; compute "
            "model.initialize_op first"
        )
    return name


# ------------------------------------------------------------------ worker cache
# use_factors_weights_cache=True keeps the fixed factor and the weights in the memory
# of every process that runs a solve, keyed by the store, the initialisation token and
# the (immutable) version name, so that later minibatches of the same sweep reuse them.
# Lost with a worker and rebuilt lazily; a store without a token is never cached.
_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _load(store, name, token, use_cache):
    if not use_cache or token is None:
        return None
    key = (store.path, token, name)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = np.asarray(store.group[name][...])
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def take_rows(store, name, index, token, use_cache):
    """Rows ``index`` (sorted, unique) of the array ``name`` as float64."""
    full = _load(store, name, token, use_cache)
    if full is not None:
        return np.asarray(full[index], dtype=np.float64)
    array = store.group[name]
    if index.size == 0:
        return np.zeros((0, *array.shape[1:]))
    # zarr reads only the chunks that hold these rows
    return np.asarray(array.oindex[(index,) + (slice(None),) * (array.ndim - 1)],
                      dtype=np.float64)


def slice_rows(store, name, start, stop, token, use_cache):
    """Rows ``start:stop`` of the array ``name`` as float64."""
    full = _load(store, name, token, use_cache)
    if full is not None:
        return np.asarray(full[start:stop], dtype=np.float64)
    return np.asarray(store.group[name][start:stop], dtype=np.float64)


def warm(store, axis, cfg, weights_only=False):
    """Fill this process's cache for solving ``axis`` (TF's worker/update init ops)."""
    if not cfg["use_cache"]:
        return None
    try:
        ctx = resolve(store, axis)
    except RuntimeError:
        logger.debug("nothing to cache yet: the model is not initialised")
        return None
    if not cfg["als"]:
        for a in ("row", "col"):
            _load(store, f"{a}_weights", ctx["token"], True)
    if not weights_only:
        _load(store, ctx["fixed"], ctx["token"], True)
    return None


# ------------------------------------------------------------------ inputs
def entries_from_blocks(parts, start, stop):
    """The entries of rows ``start:stop`` from sparse blocks ``[(block, r0, c0), ...]``.

    ``r0`` and ``c0`` are the global row and column of a block's first element.
    Returns ``(rows, cols, data)`` with rows local to ``start`` (sorted, stable).
    """
    rows, cols, data = [], [], []
    for block, r0, c0 in parts:
        r, c, d = coo_parts(block)
        r = r + r0
        keep = (r >= start) & (r < stop)
        rows.append(r[keep] - start)
        cols.append(c[keep] + c0)
        data.append(d[keep])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    rows, cols, data = np.concatenate(rows), np.concatenate(cols), np.concatenate(data)
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        raise ValueError(
            f"sp_input contains {bad.size} non-finite values (NaN or inf); the first is "
            f"{data[bad[0]]}. Drop or impute them first."
        )
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order], data[order]


def count_present(entries):
    """Number of distinct rows among a group's entries."""
    return int(np.unique(entries[0]).size)


def offsets(counts, expected):
    """Start of each group's rows in the projected order; checks the total."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total != expected:
        raise ValueError(
            f"projection_weights has {expected} values but sp_input has {total} rows to "
            "project; pass one weight per projected row (in order of appearance), a "
            "scalar, or None for 1.0"
        )
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


# ------------------------------------------------------------------ solving
def read_gramian(store, ctx):
    """The fixed factor's Gramian as stored with its current version."""
    name = ctx["fixed_gram"]
    if name is None or name not in store.group:
        x = np.asarray(store.group[ctx["fixed"]][...], dtype=np.float64)
        return x.T @ x
    return np.asarray(store.group[name][...], dtype=np.float64)


def gram_rows(store, name, start, stop):
    """XᵀX (float64) of rows ``start:stop`` of the factor version ``name``."""
    x = np.asarray(store.group[name][start:stop], dtype=np.float64)
    return x.T @ x


def solve_group(store, ctx, base, entries, n_rows, row_offset, cfg, override=None):
    """Solve the rows of one group that have stored entries.

    ``override`` replaces the model's own-axis weights R (projections): None uses the
    store's, a float is used for every row, and ``(weights, offset)`` gives the
    present rows, in order, ``weights[offset:]``. Rows without entries are not solved.

    Returns
    -------
    present : int64 (p,)
        Group-local indices of the solved rows, ascending.
    x : (p, k) in the store's dtype
        Their new values.
    stats : (sums, gram, count)
        :func:`daskwals._kernels.loss_block` sums at the new values, x64ᵀx64 of the
        solved rows and p.
    """
    rows, cols, data = entries
    k = base.shape[0]
    present = np.unique(rows)
    used, local_cols = np.unique(cols, return_inverse=True)
    token, use_cache = ctx["token"], cfg["use_cache"]
    vg = take_rows(store, ctx["fixed"], used, token, use_cache).reshape(-1, k)
    if cfg["als"]:
        # ALS: W_ij = W0 everywhere, i.e. R = 0 in the normal equations (DESIGN.md §1)
        r = np.zeros(n_rows)
        cg = np.ones(used.size)
    else:
        other = _OTHER[cfg["axis"]]
        cg = take_rows(store, f"{other}_weights", used, token, use_cache)
        if override is None:
            r = slice_rows(store, f"{cfg['axis']}_weights", row_offset, row_offset + n_rows,
                           token, use_cache)
        elif isinstance(override, tuple):
            weights, start = override
            r = np.zeros(n_rows)
            r[present] = np.asarray(weights, dtype=np.float64)[start : start + present.size]
        else:
            r = np.full(n_rows, float(override))
    piece = Piece(rows=np.asarray(rows, np.int64), cols=local_cols.astype(np.int64),
                  data=np.asarray(data, np.float64), vg=vg, cg=cg)
    # previous=None and solve_empty=False leave absent rows at zero, so the returned
    # Gramian is exactly U_Iᵀ U_I over the solved rows I.
    x, sums, gram = solve_pieces(
        [piece], n_rows, r, base, cfg["w0"], dtype=cfg["dtype"], solve_empty=False,
        previous=None, row_offset=row_offset, context=cfg["context"],
    )
    return present, x[present], (sums, gram, float(present.size))


def part(result, index):
    """One field of a :func:`solve_group` result."""
    return result[index]


def assemble(order, *parts):
    """Concatenate solved blocks and put their rows in ``order``."""
    x = np.concatenate(parts) if parts else np.zeros((0, 0))
    return x if order is None else x[order]


def minibatch_losses(stats, fixed_gram, n_own, n_fixed, w0, lam):
    """TF's normalised ``(unregularized_loss, regularization, sum_weights)``.

    With I the solved rows, s = n/|I| and G the fixed factor's Gramian (DESIGN.md §1)::

        unregularized_loss = s·[W0(Σ(A−p)² − Σp² + tr(U_IᵀU_I·G)) + Σ R_iC_j(A−p)²]
        regularization     = λ(s·tr(U_IᵀU_I) + tr G)          (0 when λ is None)
        sum_weights        = W0·n·m + s·Σ R_iC_j

    the sums running over the stored entries of the rows I, at the new values. With
    no rows the sparse terms are empty and s is taken as 0.
    """
    sums, gram_i, count = stats
    g = np.asarray(fixed_gram, dtype=np.float64)
    s = n_own / count if count else 0.0
    unregularized = s * (w0 * (sums[0] - sums[1] + float(np.trace(gram_i @ g))) + sums[2])
    regularization = 0.0 if lam is None else lam * (s * float(np.trace(gram_i))
                                                    + float(np.trace(g)))
    sum_weights = w0 * n_own * n_fixed + s * sums[3]
    return float(unregularized), float(regularization), float(sum_weights)


# ------------------------------------------------------------------ writing
# The store's metadata is rewritten whole (read, change, write): tasks of this process
# that change it take this lock, so that two ops computed at once on threads cannot
# undo each other's changes. (Processes are not covered: see WALSModel's notes.)
_META_LOCK = threading.Lock()


def _concurrent(axis, started, now):
    return RuntimeError(
        f"the {axis} factors changed while this update ran (it started from {started!r}, "
        f"the store now holds {now!r}); compute update ops of one axis one after the "
        "other, not in one dask.compute call"
    )


def refuse_if_locked(store):
    """Refuse to write while another writer (a running ``WALS.fit``) holds the store."""
    type(store).check_unlocked(store.path)


def begin_write(store, ctx, axis):
    """Create the new (not yet current) version that an update op writes."""
    refuse_if_locked(store)
    with _META_LOCK:
        name, _ = store.new_factor(axis, tag=uuid.uuid4().hex[:8])
    return {**ctx, "new": name, "axis": axis}


def write_chunk(store, wctx, start, stop, solved=None):
    """Write rows ``start:stop`` (one whole chunk) of the new version; returns XᵀX.

    Rows absent from ``solved`` (``(present, x)``, chunk-local) are copied from the
    version the update started from.
    """
    try:
        out = store.group[wctx["new"]]
        if solved is not None and solved[0].size == stop - start:
            x = np.asarray(solved[1])
        else:
            x = np.asarray(store.group[wctx["own"]][start:stop])
            if solved is not None and solved[0].size:
                x[solved[0]] = solved[1]
    except KeyError:
        # another op committed meanwhile and removed the versions this one uses
        raise _concurrent(wctx["axis"], wctx["own"],
                          store.meta["current"].get(f"{wctx['axis']}_factors")) from None
    out[start:stop] = x
    x64 = x.astype(np.float64)
    return x64.T @ x64


def commit_update(store, wctx, axis, gram):
    """Make an update's new version current (one task per op)."""
    with _META_LOCK:
        current = store.meta["current"].get(f"{axis}_factors")
        if current != wctx["own"]:
            raise _concurrent(axis, wctx["own"], current)
        store.commit([(axis, wctx["new"], gram)])
    logger.debug("committed %s as the current %s factors", wctx["new"], axis)


def write_gramian(store, axis, name, gram):
    """Store ``gram`` as the Gramian of version ``name`` if it is still current."""
    current = store.meta["current"]
    if current.get(f"{axis}_factors") != name:
        logger.debug("the %s factors moved on from %s; its Gramian is not rewritten", axis, name)
        return None
    refuse_if_locked(store)
    gname = current.get(f"{axis}_gramian")
    if gname is None or gname not in store.group:
        with _META_LOCK:
            store.commit([(axis, name, gram)])
    else:
        # one k × k chunk: the write is atomic, readers see the old or the new values
        store.group[gname][...] = np.asarray(gram, dtype=np.float64)
    return None


# ------------------------------------------------------------------ initialisation
def begin_init(store, row_weights, col_weights):
    """Write the weights and create new versions of both factors (initialize_op)."""
    refuse_if_locked(store)
    store.write_weights("row", row_weights)
    store.write_weights("col", col_weights)
    plan = {"token": uuid.uuid4().hex}
    with _META_LOCK:
        for axis in ("row", "col"):
            plan[axis], _ = store.new_factor(axis, tag=plan["token"][:8])
    return plan


def open_version(store, plan, axis):
    """The zarr array that ``initialize_op`` writes for ``axis``."""
    return store.group[plan[axis]]


def commit_init(store, plan, row_gram, col_gram):
    """Make both initial factors current and record a fresh initialisation token."""
    with _META_LOCK:
        store.commit(
            [("row", plan["row"], row_gram), ("col", plan["col"], col_gram)],
            extra={INIT_TOKEN: plan["token"]},
        )
    logger.info("initialised the model in %s", store.path)


# ------------------------------------------------------------------ reading
def read_current(store, axis, start, stop):
    """Rows ``start:stop`` of the current version of ``axis``'s factor."""
    return np.asarray(store.group[current_name(store, axis)][start:stop])


def read_weights(store, axis, start, stop):
    """Entries ``start:stop`` of R (axis='row') or C (axis='col')."""
    name = f"{axis}_weights"
    if name not in store.group:
        raise RuntimeError(
            f"the model store at {store.path!r} holds no {axis} weights; compute "
            "model.initialize_op first"
        )
    return np.asarray(store.group[name][start:stop], dtype=np.float64)
