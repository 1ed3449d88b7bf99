r"""``WALSModel``: TensorFlow 1.x ``tf.contrib.factorization.WALSModel``, on dask.

The same constructor, the same ops and the same numbers as TF's class; TF's ops become
lazy dask objects (``sess.run(op)`` is ``dask.compute(op)``) and TF's variables become
arrays in a :class:`~daskwals.FactorStore`. See ``docs/migration.md``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from . import _walsargs as _args
from . import _walsgraph
from ._walsgraph import Spec
from .store import FactorStore

__all__ = ["UpdateResult", "WALSModel"]

logger = logging.getLogger(__name__)

class UpdateResult(NamedTuple):
    """What :meth:`WALSModel.update_row_factors` and ``update_col_factors`` return.

    All fields are lazy: ``new_values`` a dask array, the others ``dask.delayed``.
    """

    new_values: da.Array
    update_op: Any
    unregularized_loss: Any
    regularization: Any
    sum_weights: Any


class WALSModel:
    r"""Weighted alternating least squares with TensorFlow 1.x ``WALSModel``'s interface.

    Minimises over U (n × k) and V (m × k)

    .. math::

        \sum_{ij} W_{ij} (A_{ij} - u_i \cdot v_j)^2 + \lambda (\|U\|_F^2 + \|V\|_F^2),
        \qquad W_{ij} = W_0 + R_i C_j \text{ if } (i, j) \text{ is stored, else } W_0,

    where A's unstored entries count as 0 ("observed" means stored, stored zeros
    included), W0 = ``unobserved_weight``, R, C = ``row_weights``, ``col_weights`` and
    λ = ``regularization``. An update solves, for every row present in its input and
    with the other factor fixed, the normal equations of DESIGN.md §1; rows absent from
    the input are left as they are.

    TF's ops are lazy dask objects whose effects live in the model's store, so they can
    be computed in separate ``dask.compute`` calls, on any scheduler, and from another
    process that builds a ``WALSModel`` on the same ``store``. A typical sweep::

        dask.compute(model.initialize_op)
        dask.compute(model.worker_init)
        rows = model.update_row_factors(A)       # built once, computed any number of times
        cols = model.update_col_factors(A)
        for _ in range(n_iter):
            dask.compute(model.row_update_prep_gramian_op)
            dask.compute(model.initialize_row_update_op)
            dask.compute(rows.update_op)
            dask.compute(model.col_update_prep_gramian_op)
            dask.compute(model.initialize_col_update_op)
            dask.compute(cols.update_op)

    Parameters
    ----------
    input_rows, input_cols : int
        n and m, the shape of A.
    n_components : int
        The rank k.
    unobserved_weight : float, default 0.1
        W0.
    regularization : float or None, default None
        λ; None means no regularisation term (and ``regularization`` losses of 0).
    row_init, col_init : "random", array-like, list of arrays or callable
        "random" draws N(0, 1) entries (reproducible with ``seed``); an (n, k) array gives
        U itself; a list of one array per shard is TF's sharded form; a callable is
        called once, here, and its result used as one of the above.
    num_row_shards, num_col_shards : int, default 1
        How :attr:`row_factors` (:attr:`col_factors`) and the weights are split into
        contiguous shards; the first ``n % shards`` shards hold one extra row. Shards
        are views of one stored array: they change how results are presented, never the
        numbers or the storage.
    row_weights, col_weights : None, float, list of per-shard lists or sequence
        R and C. None (both or neither) is plain ALS; a non-negative scalar is used for
        every row; a list with one list per shard is TF's form; a flat sequence gives
        all n (m) values.
    use_factors_weights_cache : bool, default True
        Keep the fixed factor and the weights in the memory of every process that
        solves (loaded once per factor version); False streams only the rows each task
        needs from the store. The numbers are the same.
    use_gramian_cache : bool, default True
        Use the Gramian stored with the fixed factor; False recomputes it from the
        factor's chunks in every update. The numbers are the same.
    use_scoped_vars : bool, default False
        Accepted for TF compatibility; there are no TF variable scopes here.
    store : str, os.PathLike, zarr store, FactorStore or None
        Where U, V, the weights and the Gramians live. None makes a temporary store. A
        store that already holds a model of the same shape and rank is opened, not
        replaced: that is how a second process works on the same model.
    seed : int or None
        Seed of the random initialisation (None draws one, kept in :attr:`seed`).
    dtype : {"float32", "float64"} or None
        Storage precision of the factors (TF: float32). None: float32 for a new store,
        the store's own for an existing one. Solves always run in float64.
    chunks : int, (int, int) or None
        Rows per stored factor chunk for U and V (the unit one task writes). None picks
        ``ceil(n / num_shards)`` rows, at most 32 MiB per chunk.
    split_every : int or None
        Fan-in of the tree reductions.

    Notes
    -----
    Differences from TF, all deliberate: the random initialisation is seeded; a
    singular system raises :class:`~daskwals.SingularSystemError` naming the fix rather
    than returning NaN; updates and projections always use the Gramian of the fixed
    factor as it is *now* (every stored factor version carries its exact Gramian, so a
    forgotten ``*_prep_gramian_op`` never gives stale results); an update op writes a
    new version of the factor and makes it current atomically, so a failed op leaves
    the model as it was. Update ops of one axis must be computed one after the other.
    """

    def __init__(
        self,
        input_rows: int,
        input_cols: int,
        n_components: int,
        unobserved_weight: float = 0.1,
        regularization: float | None = None,
        row_init: Any = "random",
        col_init: Any = "random",
        num_row_shards: int = 1,
        num_col_shards: int = 1,
        row_weights: Any = 1,
        col_weights: Any = 1,
        use_factors_weights_cache: bool = True,
        use_gramian_cache: bool = True,
        use_scoped_vars: bool = False,
        *,
        store: Any = None,
        seed: int | None = None,
        dtype: str | None = None,
        chunks: int | tuple[int, int] | None = None,
        split_every: int | None = None,
    ) -> None:
        n = _args.positive_int("input_rows", input_rows)
        m = _args.positive_int("input_cols", input_cols)
        k = _args.positive_int("n_components", n_components)
        w0 = _args.nonneg("unobserved_weight", unobserved_weight)
        lam = None if regularization is None else _args.nonneg("regularization", regularization)
        shards = {"row": _args.positive_int("num_row_shards", num_row_shards),
                  "col": _args.positive_int("num_col_shards", num_col_shards)}
        for name, flag in (("use_factors_weights_cache", use_factors_weights_cache),
                           ("use_gramian_cache", use_gramian_cache),
                           ("use_scoped_vars", use_scoped_vars)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False; got {flag!r}")
        lengths = {"row": n, "col": m}
        self._shard_sizes = {a: self.shard_sizes(lengths[a], shards[a]) for a in lengths}
        if (row_weights is None) != (col_weights is None):
            raise ValueError(
                "row_weights and col_weights must both be None (plain ALS) or both be given; "
                f"got row_weights={_args.short(row_weights)} and "
                f"col_weights={_args.short(col_weights)}. "
                "Set the other one to None, or to 1."
            )
        als = row_weights is None
        self._weights = {
            a: None if als else _args.shard_weights(f"{a}_weights", w, self._shard_sizes[a])
            for a, w in (("row", row_weights), ("col", col_weights))
        }
        self._inits = {
            a: _args.initial_factor(f"{a}_init", init, self._shard_sizes[a], k)
            for a, init in (("row", row_init), ("col", col_init))
        }
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
        if dtype is not None:
            dtype = _args.dtype_name(dtype, allow_none=True)
        if split_every is not None and (not isinstance(split_every, numbers.Integral)
                                        or split_every < 2):
            raise ValueError(f"split_every must be an integer ≥ 2 or None; got {split_every!r}")

        fstore = _args.open_or_create(
            store, (n, m), k, dtype, chunks, shards,
            params={"n_components": k, "unobserved_weight": w0, "regularization": lam,
                    "als": als, "seed": int(seed), "api": "WALSModel"},
        )
        meta = fstore.meta
        self._store = fstore
        self._spec = Spec(
            store=fstore, shape=(n, m), n_components=k,
            chunks={"row": meta["row_chunk"], "col": meta["col_chunk"]},
            unobserved_weight=w0, regularization=lam, als=als, dtype=meta["dtype"],
            use_cache=bool(use_factors_weights_cache), use_gramian_cache=bool(use_gramian_cache),
            split_every=split_every,
        )
        self._input_rows, self._input_cols, self._n_components = n, m, k
        self._num_shards = shards
        self._unobserved_weight, self._regularization = w0, lam
        self._use_factors_weights_cache = bool(use_factors_weights_cache)
        self._use_gramian_cache = bool(use_gramian_cache)
        self._use_scoped_vars = bool(use_scoped_vars)
        self.seed = int(seed)
        logger.debug("WALSModel %d × %d, k=%d on %s", n, m, k, fstore.path)

    # ------------------------------------------------------------------ state
    @property
    def store(self) -> FactorStore:
        """The :class:`~daskwals.FactorStore` holding this model's arrays."""
        return self._store

    @property
    def row_factors(self) -> list[da.Array]:
        """U as one lazy array per row shard, read from the store when computed."""
        return _walsgraph.factor_views(self._spec, "row", self._shard_sizes["row"])

    @property
    def col_factors(self) -> list[da.Array]:
        """V as one lazy array per column shard, read from the store when computed."""
        return _walsgraph.factor_views(self._spec, "col", self._shard_sizes["col"])

    @property
    def row_weights(self) -> list[da.Array] | None:
        """R as one lazy array per row shard (None in ALS mode, as in TF)."""
        if self._spec.als:
            return None
        return _walsgraph.weight_views(self._spec, "row", self._shard_sizes["row"])

    @property
    def col_weights(self) -> list[da.Array] | None:
        """C as one lazy array per column shard (None in ALS mode, as in TF)."""
        if self._spec.als:
            return None
        return _walsgraph.weight_views(self._spec, "col", self._shard_sizes["col"])

    # ------------------------------------------------------------------ ops
    @property
    def initialize_op(self):
        """Lazy op writing the initial U and V, their Gramians and the weights.

        Computing it again re-initialises the model (a new random draw only if ``seed``
        changed: the draw depends on the seed alone).
        """
        weights = {a: None if w is None else np.concatenate(w) if w else np.zeros(0)
                   for a, w in self._weights.items()}
        return _walsgraph.build_init(self._spec, self._inits, weights, self.seed)

    @property
    def worker_init(self):
        """Lazy op loading the weights into this process's cache (a no-op without it)."""
        return _walsgraph.build_warm(self._spec, "row", weights_only=True)

    @property
    def row_update_prep_gramian_op(self):
        """Lazy op recomputing VᵀV from the current V and storing it with V."""
        return _walsgraph.build_prep_gramian(self._spec, "col")

    @property
    def col_update_prep_gramian_op(self):
        """Lazy op recomputing UᵀU from the current U and storing it with U."""
        return _walsgraph.build_prep_gramian(self._spec, "row")

    @property
    def initialize_row_update_op(self):
        """Lazy op caching V (and the weights) for row updates, if caching is on."""
        return _walsgraph.build_warm(self._spec, "row")

    @property
    def initialize_col_update_op(self):
        """Lazy op caching U (and the weights) for column updates, if caching is on."""
        return _walsgraph.build_warm(self._spec, "col")

    # ------------------------------------------------------------------ updates
    def update_row_factors(self, sp_input: Any, transpose_input: bool = False) -> UpdateResult:
        """Solve the rows of U that have stored entries in ``sp_input``.

        Parameters
        ----------
        sp_input : scipy.sparse matrix, sparse array, dask array of sparse blocks or Ratings
            Any subset of A's rows, with global row and column indices; each row given
            must come with all its stored entries. Stored entries are the observed set.
        transpose_input : bool, default False
            True when ``sp_input`` is a slice of Aᵀ (its columns are the rows to solve).

        Returns
        -------
        UpdateResult
            ``new_values`` (the solved rows, in order of first appearance in
            ``sp_input``; ascending for dask and Ratings inputs), ``update_op`` (writes
            them to the store; nothing is written before it is computed), and the three
            normalised loss terms of TF (DESIGN.md §1) at the new values:
            ``unregularized_loss``, ``regularization`` and ``sum_weights``.
        """
        return self._update("row", sp_input, bool(transpose_input))

    def update_col_factors(self, sp_input: Any, transpose_input: bool = False) -> UpdateResult:
        """Solve the rows of V (A's columns) that have stored entries in ``sp_input``.

        ``transpose_input=False`` means ``sp_input`` is in A's own [row, column]
        orientation; True means it is a slice of Aᵀ (one row per column of A), as in TF.
        See :meth:`update_row_factors` for the rest.
        """
        return self._update("col", sp_input, not transpose_input)

    def _update(self, axis, sp_input, swap):
        inp = _walsgraph.orient(sp_input, swap, self._spec, axis, check_own=True)
        _args.check_nonempty(inp)
        return UpdateResult(*_walsgraph.build_update(self._spec, axis, inp))

    # ------------------------------------------------------------------ projections
    def project_row_factors(
        self, sp_input: Any, transpose_input: bool = False, projection_weights: Any = None,
    ) -> da.Array:
        """Fold rows in: solve one row update for each row of ``sp_input``, assign nothing.

        Parameters
        ----------
        sp_input : scipy.sparse matrix, sparse array, dask array of sparse blocks or Ratings
            The rows to project; their column indices are A's, their row indices only
            group the entries (they may be new rows).
        transpose_input : bool, default False
            True when ``sp_input`` is a slice of Aᵀ.
        projection_weights : None, float or sequence
            R_i for the projected rows: None is 1.0, a scalar is used for every row, a
            sequence gives one value per projected row, in order of first appearance.
            Ignored in ALS mode, as in TF.

        Returns
        -------
        dask.array.Array
            (rows, k), in order of first appearance (ascending for dask and Ratings
            inputs), solved with the Gramian of the current V.
        """
        return self._project("row", sp_input, bool(transpose_input), projection_weights)

    def project_col_factors(
        self, sp_input: Any, transpose_input: bool = False, projection_weights: Any = None,
    ) -> da.Array:
        """Fold columns in; the mirror image of :meth:`project_row_factors`.

        ``transpose_input=False`` means ``sp_input`` is in A's [row, column] orientation.
        """
        return self._project("col", sp_input, not transpose_input, projection_weights)

    def _project(self, axis, sp_input, swap, projection_weights):
        inp = _walsgraph.orient(sp_input, swap, self._spec, axis, check_own=False)
        _args.check_nonempty(inp)
        weights = 1.0 if projection_weights is None else projection_weights
        if not self._spec.als:
            weights = _args.projection_weights_value(weights, inp)
        return _walsgraph.build_projection(self._spec, axis, inp, weights)

    # ------------------------------------------------------------------ sharding
    @staticmethod
    def shard_sizes(size: int, num_shards: int) -> list[int]:
        """TF's "div" layout: contiguous shards, the first ``size % num_shards`` one larger."""
        q, r = divmod(int(size), int(num_shards))
        return [q + 1] * r + [q] * (num_shards - r)

    @staticmethod
    def sharding_func(size: int, num_shards: int) -> Callable:
        """TF's sharding function: global ids → ``(shard, id within the shard)``.

        With one shard it returns ``(None, ids)``, as TF's does.
        """
        q, extras = divmod(int(size), int(num_shards))

        def func(ids):
            ids = np.asarray(ids, dtype=np.int64)
            if num_shards == 1:
                return None, ids
            boundary = extras * (q + 1)
            big = ids < boundary
            rest = ids - boundary
            step = max(q, 1)
            shard = np.where(big, ids // (q + 1), extras + rest // step)
            local = np.where(big, ids % (q + 1), rest % step)
            return shard, local

        return func

    @classmethod
    def scatter_update(
        cls, factor: Sequence, indices: Any, values: Any, sharding_func: Callable | None,
        name: str | None = None,
    ) -> list:
        """Assign ``values`` to the global rows ``indices`` of a sharded ``factor``.

        ``factor`` is a list of per-shard arrays; ``sharding_func`` maps global ids to
        ``(shard, local id)`` (see :meth:`sharding_func`; with one shard it is not
        called). NumPy shards are updated in place, dask shards are replaced by updated
        lazy arrays; the list of shards is returned. ``name`` is accepted for TF
        compatibility. With repeated indices the last value wins.
        """
        if not isinstance(factor, (list, tuple)) or not factor:
            raise ValueError(
                "factor must be a non-empty list of per-shard arrays (e.g. model.row_factors "
                f"computed); got {type(factor).__name__}"
            )
        indices = np.asarray(indices, dtype=np.int64).ravel()
        values = np.asarray(values)
        if values.shape[:1] != indices.shape:
            raise ValueError(
                f"values must have one row per index; got {values.shape[0] if values.ndim else 0} "
                f"rows for {indices.size} indices"
            )
        shards = list(factor)
        if len(shards) == 1:
            assignment, local = np.zeros(indices.size, np.int64), indices
        else:
            if sharding_func is None:
                raise ValueError(
                    "sharding_func is required with more than one shard; use "
                    f"WALSModel.sharding_func(total_rows, {len(shards)})"
                )
            assignment, local = (np.asarray(a, dtype=np.int64) for a in sharding_func(indices))
        for s in range(len(shards)):
            mask = assignment == s
            if not mask.any():
                continue
            shards[s] = _assign_rows(shards[s], local[mask], values[mask])
        return shards

    def __repr__(self):
        return (
            f"WALSModel(input_rows={self._input_rows}, input_cols={self._input_cols}, "
            f"n_components={self._n_components}, store={self._store.path!r})"
        )


# ---------------------------------------------------------------------- helpers
def _assign_rows(shard, local, values):
    size = shard.shape[0]
    bad = local[(local < 0) | (local >= size)]
    if bad.size:
        raise ValueError(f"index {bad[0]} is outside a shard of {size} rows")
    if isinstance(shard, da.Array):

        def assign(x):
            x = np.array(x, copy=True)
            x[local] = values
            return x

        return da.from_delayed(dask.delayed(assign)(shard), shape=shard.shape, dtype=shard.dtype)
    shard[local] = values
    return shard


