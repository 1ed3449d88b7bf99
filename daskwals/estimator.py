"""``WALS``: the scikit-learn-style estimator in front of the sweep engine."""

from __future__ import annotations

import contextlib
import inspect
import logging
import numbers
import os
import shutil
import time

import dask
import dask.array as da
import numpy as np
import scipy.sparse

from . import _graph
from ._ids import IdMap
from ._validation import check_int as _check_int
from ._validation import dtype_name as _check_dtype
from ._validation import nonneg as _check_nonneg
from ._validation import short as _short
from ._validation import weight_vector
from .cluster import check_store_reachable
from .ratings import as_ratings
from .recommend import rows_csr, topk, topk_all_rows
from .store import FactorStore, writer_lock

__all__ = ["WALS"]

logger = logging.getLogger(__name__)


class WALS:
    r"""Weighted alternating least squares matrix factorisation A ≈ U Vᵀ on dask.

    Minimises, over U (n × k) and V (m × k),

    .. math::

        \sum_{ij} W_{ij} (A_{ij} - u_i \cdot v_j)^2 + \lambda (\|U\|_F^2 + \|V\|_F^2),
        \qquad W_{ij} = W_0 + R_i C_j \text{ if } (i, j) \text{ is stored, else } W_0,

    where unstored entries of A count as 0, W0 = ``unobserved_weight``, R and C are the
    row and column weights and λ = ``regularization``. Each iteration solves every row
    of U exactly with V fixed, then every row of V with U fixed (TensorFlow 1.x
    ``WALSModel`` semantics), so the objective never rises.

    Parameters
    ----------
    n_components : int
        The rank k.
    unobserved_weight : float, default 0.1
        W0, the weight of every entry (stored or not) — the implicit-feedback prior.
    regularization : float or None, default None
        λ. None means no regularisation term at all.
    row_weights, col_weights : float, array-like or None, default 1
        R (length n) and C (length m): non-negative scalars or vectors. Both None is
        plain ALS (W_ij = W0 everywhere); one None without the other is an error.
    n_iter : int, default 10
        Iterations (a row sweep then a column sweep each).
    row_init, col_init : "random" or array-like, default "random"
        "random" draws N(0, 1) entries (reproducible with ``seed`` and independent of
        the chunking); an array gives the initial U (n × k) or V (m × k).
    seed : int or None
        Seed of the random initialisation; None draws one (kept in ``seed_``).
    dtype : {"float32", "float64"}, default "float32"
        Storage precision of the factors. Normal equations are always accumulated and
        solved in float64.
    store : str, path, zarr store or None
        Where the model lives; None uses a temporary directory removed with the model.
    overwrite : bool, default False
        Replace an existing model at ``store``.
    chunks : "auto", int or (int, int)
        Row and column block sizes of the ratings (ignored for dask arrays and Ratings,
        whose chunking is kept). Factor chunks equal these blocks.
    split_every : int or None
        Fan-in of the tree reductions (Gramians, loss sums).
    entry_weights : callable, sparse matrix or None
        Per-entry multipliers e_ij of the stored entries' extra weight, so that
        W_ij = W0 + R_i C_j e_ij: a function of the values (``lambda r: alpha * r`` gives
        implicit's confidence model with ``unobserved_weight=1``, weights 1), or a matrix
        with exactly the ratings' stored pattern (same chunking for dask input). Weights
        must be finite and ≥ 0; they are checked block by block as the sweeps read them.
    regularization_mode : {"constant", "frequency"}, default "constant"
        "frequency" scales λ by each row's (column's) number of stored entries, so the
        regulariser is λ(Σ n_i‖u_i‖² + Σ m_j‖v_j‖²) (Spark's ALS-WR).
    solver : {"cholesky", "cg"}, default "cholesky"
        "cholesky" solves every row's normal equations exactly. "cg" takes ``cg_steps``
        conjugate-gradient steps warm-started from the current factors, like
        ``implicit``'s ``use_cg=True``: cheaper per iteration and *approximate* — the
        objective may not reach the exact minimiser's and is not guaranteed to fall.
    cg_steps : int, default 3
        Conjugate-gradient steps per row and sweep when ``solver="cg"``.
    use_factors_weights_cache : bool, default True
        True: each row-block task receives the whole fixed factor and its weights (read
        once per sweep, kept in worker memory). False: stream — no task holds a whole
        factor; per (row block, column block) tasks gather from one factor chunk only
        the rows that block's stored entries touch. Same numbers; False bounds memory
        per task by the chunk sizes.
    use_gramian_cache : bool, default True
        Reuse the Gramian each sweep leaves in the store; False recomputes it from the
        factor by a tree reduction before every sweep (same numbers).
    resume : bool, default False
        If ``store`` holds a model of the same shape, rank, chunking and
        hyper-parameters, continue it from its last completed sweep (each sweep is a
        checkpoint) up to ``n_iter`` iterations; otherwise start afresh there.
    break_lock : bool, default False
        Take over the store's single-writer lock even if another process seems to hold
        it (a lock of a process that no longer runs on this host is taken over anyway).
    callback : callable or None
        Called as ``callback(model, iteration, loss)`` after every iteration.

    Attributes
    ----------
    row_factors_, col_factors_ : dask.array.Array
        U and V, read from the store (``np.asarray`` loads them).
    loss_history_ : list of float
        The full objective after each iteration.
    n_iter_ : int
        Iterations run.
    seed_ : int
        The seed used for random initialisation.
    store_ : FactorStore
        The model's store.
    """

    def __init__(
        self,
        n_components=10,
        *,
        unobserved_weight=0.1,
        regularization=None,
        row_weights=1,
        col_weights=1,
        n_iter=10,
        row_init="random",
        col_init="random",
        seed=None,
        dtype="float32",
        store=None,
        overwrite=False,
        chunks="auto",
        split_every=None,
        entry_weights=None,
        regularization_mode="constant",
        solver="cholesky",
        cg_steps=3,
        use_factors_weights_cache=True,
        use_gramian_cache=True,
        resume=False,
        break_lock=False,
        callback=None,
    ):
        self.n_components = n_components
        self.unobserved_weight = unobserved_weight
        self.regularization = regularization
        self.row_weights = row_weights
        self.col_weights = col_weights
        self.n_iter = n_iter
        self.row_init = row_init
        self.col_init = col_init
        self.seed = seed
        self.dtype = dtype
        self.store = store
        self.overwrite = overwrite
        self.chunks = chunks
        self.split_every = split_every
        self.entry_weights = entry_weights
        self.regularization_mode = regularization_mode
        self.solver = solver
        self.cg_steps = cg_steps
        self.use_factors_weights_cache = use_factors_weights_cache
        self.use_gramian_cache = use_gramian_cache
        self.resume = resume
        self.break_lock = break_lock
        self.callback = callback

    # --------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        """The estimator's parameters, as scikit-learn defines them."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters by name; returns self."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for WALS; valid parameters are {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [
            f"{k}={v!r}" for k, v in self.get_params().items()
            if not (isinstance(v, (str, numbers.Number, type(None), bool)) and v == defaults[k])
        ]
        return f"WALS({', '.join(changed)})"

    # --------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Factorise the ratings ``X``; returns self.

        ``X`` is a scipy.sparse matrix, a ``sparse`` array, a dask array with ``sparse``
        blocks (its chunking is kept) or a :class:`daskwals.Ratings`. Stored entries are
        the observed set, stored zeros included.
        """
        ratings = as_ratings(X, chunks=self.chunks)
        n, m = ratings.shape
        k = _check_int("n_components", self.n_components, 1)
        n_iter = _check_int("n_iter", self.n_iter, 0)
        w0 = _check_nonneg("unobserved_weight", self.unobserved_weight)
        lam = None if self.regularization is None else _check_nonneg(
            "regularization", self.regularization
        )
        dtype = _check_dtype(self.dtype)
        rw, cw = _resolve_weights(self.row_weights, self.col_weights, n, m)
        row_init = _check_init("row_init", self.row_init, n, k)
        col_init = _check_init("col_init", self.col_init, m, k)
        seed = self.seed
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        seed = _check_int("seed", seed, 0)

        ew = self.entry_weights
        if ew is not None and not callable(ew):
            ew = as_ratings(ew, chunks=ratings.chunks)
            if ew.shape != ratings.shape or ew.chunks != ratings.chunks:
                raise ValueError(
                    f"entry_weights must have the ratings' shape {ratings.shape} and chunks; got "
                    f"shape {ew.shape}"
                )
        if ew is not None and rw is None:
            raise ValueError(
                "entry_weights need row_weights and col_weights (they multiply R_i C_j); in "
                "plain ALS mode there is no stored-entry weight. Set row_weights=1, col_weights=1."
            )
        if self.regularization_mode not in ("constant", "frequency"):
            raise ValueError(f"regularization_mode must be 'constant' or 'frequency'; got "
                             f"{self.regularization_mode!r}")
        if self.solver not in ("cholesky", "cg"):
            raise ValueError(f"solver must be 'cholesky' or 'cg'; got {self.solver!r}")
        _check_int("cg_steps", self.cg_steps, 1)
        params = {
            "n_components": k, "unobserved_weight": w0, "regularization": lam,
            "als": rw is None, "seed": seed, "regularization_mode": self.regularization_mode,
            "entry_weights": None if ew is None else ("function" if callable(ew) else "matrix"),
        }
        chunks = (ratings.chunks[0][0], ratings.chunks[1][0])
        path = None if self.store is None else _store_path(self.store)
        if ratings._nnz == 0:
            raise ValueError(
                f"X has no stored entries ({n} × {m}), so there is nothing to fit; "
                "check the input (an empty file, a filter that removed everything?)"
            )
        if self.split_every is not None and (
                isinstance(self.split_every, bool) or not isinstance(self.split_every, int)
                or self.split_every < 2):
            raise ValueError(
                f"split_every must be an integer ≥ 2 or None; got {self.split_every!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be callable (model, iteration, loss); got "
                             f"{self.callback!r}")
        if path is not None:
            check_store_reachable(path)
        # One writer: the lock is held from before the store is created (or reopened)
        # until the last sweep is committed.
        with writer_lock(path, break_lock=self.break_lock) if path is not None \
                else contextlib.nullcontext():
            existed = path is not None and os.path.exists(os.path.join(str(path), "zarr.json"))
            try:
                store = self._prepare_store(path, ratings, k, dtype, chunks, params, rw, cw,
                                            row_init, col_init, seed)
                seed = store.meta["params"]["seed"]
                if path is None:
                    check_store_reachable(store.path)  # a temporary directory is client-local
                if ratings.in_memory:
                    # send in-memory data to the workers once, not with every sweep's graph
                    ratings = ratings.persist()
                if ew is not None and not callable(ew) and ew.in_memory:
                    ew = ew.persist()
                self.entry_weights_ = ew
                self._run(store, ratings, n_iter, w0, lam, rw is None, seed)
            except BaseException:
                # lazily checked input (a dask array with NaN, bad entry weights) fails in
                # the first sweep: a store this fit created and never advanced is removed
                if path is not None and not existed and _is_fresh(path):
                    shutil.rmtree(path, ignore_errors=True)
                raise
        self.row_factors_ = store.factor("row")
        self.col_factors_ = store.factor("col")
        return self

    def _prepare_store(self, path, ratings, k, dtype, chunks, params, rw, cw, row_init,
                       col_init, seed):
        """Reopen the model to resume, or create and initialise a new one."""
        n, m = ratings.shape
        if self.resume and path is not None:
            store = _open_for_resume(path, (n, m), chunks, dtype, params,
                                     seed_given=self.seed is not None)
            if store is not None:
                _check_same_weights(store, rw, cw)
                return store
        store = FactorStore.create(
            path, (n, m), k, row_chunk=chunks[0], col_chunk=chunks[1], dtype=dtype,
            params=params, overwrite=self.overwrite or self.resume,
        )
        store.write_weights("row", rw)
        store.write_weights("col", cw)
        inits = [
            _graph.build_init(store, axis, seed=seed, values=init, split_every=self.split_every)
            for axis, init in (("row", row_init), ("col", col_init))
        ]
        dask.compute(_graph.build_commit(store, inits))
        return store

    def _run(self, store, ratings, n_iter, w0, lam, als, seed):
        self.row_ids_ = ratings.row_ids
        self.col_ids_ = ratings.col_ids
        self.__dict__.pop("_idmaps", None)
        if ratings.row_ids is not None and not store.meta["sweeps"]:
            store.write_ids("row", ratings.row_ids)
            store.write_ids("col", ratings.col_ids)
        self.store_ = store
        self.seed_ = seed
        self.ratings_ = ratings
        meta = store.meta
        self.loss_history_ = list(meta["loss_history"])
        self.n_iter_ = meta["sweeps"] // 2
        if meta["sweeps"]:
            logger.info("resuming from %s after %d sweeps", store.path, meta["sweeps"])
        t0 = time.perf_counter()
        for sweep in range(meta["sweeps"], 2 * n_iter):
            if sweep % 2 == 0:
                self._sweep(store, ratings, "row", w0, lam, als, final=False)
                continue
            result = self._sweep(store, ratings.T, "col", w0, lam, als, final=True)
            loss = result["loss"]
            self.loss_history_.append(loss)
            self.n_iter_ = sweep // 2 + 1
            logger.info(
                "iteration %d/%d: loss %.6g (%.2f s)", self.n_iter_, n_iter, loss,
                time.perf_counter() - t0,
            )
            t0 = time.perf_counter()
            if self.callback is not None:
                self.callback(self, self.n_iter_, loss)

    def _sweep(self, store, ratings, axis, w0, lam, als, final):
        other = "col" if axis == "row" else "row"
        if self.use_gramian_cache:
            fixed_gram = store.gramian(other)
        else:
            fixed_gram = _graph.gramian(store.factor(other), self.split_every)
        ew = self.entry_weights_
        if ew is not None and not callable(ew) and axis == "col":
            ew = ew.T
        frequency = self.regularization_mode == "frequency" and bool(lam)
        norms = store.meta.get("frequency_norm", {})
        sweep = _graph.build_sweep(
            store, ratings, axis, unobserved_weight=w0, regularization=lam,
            fixed_gram=fixed_gram, split_every=self.split_every, als=als, final=final,
            cache_factors=self.use_factors_weights_cache, entry_weights=ew,
            solver=self.solver, cg_steps=self.cg_steps, frequency=frequency,
            other_frequency_norm=norms.get(other),
        )
        (result,) = dask.compute(sweep)
        norms = {**norms, axis: float(result["sums"][4])}
        store.commit([result["update"]], sweeps=1, loss=result["loss"],
                     extra={"frequency_norm": norms})
        return result

    # ---------------------------------------------------------------- queries
    def _check_fitted(self):
        if not hasattr(self, "store_"):
            raise RuntimeError("this WALS model is not fitted yet; call fit(X) first")

    # ----------------------------------------------------------- ids and queries
    def _idmap(self, axis):
        ids = self.row_ids_ if axis == "row" else self.col_ids_
        if ids is None:
            return None
        cache = self.__dict__.setdefault("_idmaps", {})
        if axis not in cache:
            cache[axis] = IdMap(ids, "user" if axis == "row" else "item")
        return cache[axis]

    def _positions(self, axis, values, name):
        """Positions of ``values``: original ids when the model has them, else indices."""
        idmap = self._idmap(axis)
        if idmap is not None:
            return idmap.index(values)
        values = np.atleast_1d(np.asarray(values))
        n = self.store_.length(axis)
        if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
            raise ValueError(f"{name} must be a 1-d sequence of indices in [0, {n}); got "
                             f"{values!r}")
        bad = values[(values < 0) | (values >= n)]
        if bad.size:
            raise ValueError(f"{name} must lie in [0, {n}); got {bad[0]}")
        return values.astype(np.int64)

    def _labels(self, axis, positions):
        idmap = self._idmap(axis)
        return positions if idmap is None else idmap.lookup(positions)

    def _column_mask(self, filter_items, items):
        m = self.store_.length("col")
        if filter_items is None and items is None:
            return None
        allowed = np.ones(m, bool) if items is None else np.zeros(m, bool)
        if items is not None:
            allowed[self._positions("col", items, "items")] = True
        if filter_items is not None:
            allowed[self._positions("col", filter_items, "filter_items")] = False
        return allowed

    def recommend(self, rows, N=10, *, filter_already_liked=True, filter_items=None,
                  items=None, batch_size=2048):
        """The ``N`` best items for each of ``rows`` by score u_i · v_j.

        Computed per batch of rows as a top-k reduction over the column blocks of V
        (:mod:`daskwals.recommend`), so the rows × items score matrix is never formed.

        Parameters
        ----------
        rows : sequence
            Users: original ids when the model was fitted on ratings with ids (from
            :func:`daskwals.ingest` / :func:`daskwals.open_ratings`), else row indices.
        N : int
            Items per user.
        filter_already_liked : bool
            Exclude each user's stored entries in the fitted ratings.
        filter_items : sequence, optional
            Items never to recommend.
        items : sequence, optional
            Recommend only among these items.
        batch_size : int
            Users per batch (memory: batch × item block scores).

        Returns
        -------
        ids : ndarray (len(rows), N)
            Items, best first: original ids or indices like ``rows`` (-1 / None where
            fewer than N items are left).
        scores : ndarray of float64 (len(rows), N)
        """
        self._check_fitted()
        positions = self._positions("row", rows, "rows")
        ids, scores = self._recommend_indices(
            positions, N, filter_already_liked, self._column_mask(filter_items, items),
            batch_size)
        return self._labels("col", ids), scores

    def _recommend_indices(self, positions, N, filter_already_liked, allowed=None,
                           batch_size=2048):
        """:meth:`recommend` on row positions, returning column positions."""
        N = _check_int("N", N, 1)
        if filter_already_liked and self.ratings_ is None:
            raise ValueError(
                "filter_already_liked needs the ratings the model was fitted on, which this "
                "model (opened from a store) does not have; pass filter_already_liked=False "
                "or filter_items"
            )
        U = self.store_.factor_array("row")
        V = self.store_.factor("col")
        ids, scores = [], []
        for start in range(0, positions.size, batch_size):
            batch = positions[start : start + batch_size]
            users = np.asarray(U.oindex[batch])
            liked = rows_csr(self.ratings_, batch) if filter_already_liked else None
            part = topk(users, V, N, exclude=liked, allowed=allowed,
                        split_every=self.split_every)
            (result,) = dask.compute(part)
            ids.append(result[0])
            scores.append(result[1])
        if not ids:
            return np.empty((0, N), np.int64), np.empty((0, N))
        return np.concatenate(ids), np.concatenate(scores)

    def recommend_all(self, N=10, *, filter_already_liked=True, filter_items=None, items=None):
        """Lazy top-``N`` item indices and scores for every row, as dask arrays (n, N).

        One task per (row block, item block) pair, merged by a tree over item blocks;
        with ``filter_already_liked`` each pair excludes its own ratings block. Returns
        item *indices* (map them with ``col_ids_`` when the model has ids).
        """
        self._check_fitted()
        N = _check_int("N", N, 1)
        ratings = self.ratings_ if filter_already_liked else None
        if filter_already_liked and ratings is None:
            raise ValueError("filter_already_liked needs the fitted ratings; pass False")
        return topk_all_rows(self.store_.factor("row"), self.store_.factor("col"), N,
                             ratings=ratings, allowed=self._column_mask(filter_items, items),
                             split_every=self.split_every)

    def similar_items(self, items, N=10):
        """The ``N`` items most similar to each of ``items`` (cosine of item factors).

        Returns ``(ids, scores)`` like :meth:`recommend`; an item is not its own neighbour.
        """
        return self._similar("col", items, N, "items")

    def similar_users(self, users, N=10):
        """The ``N`` users most similar to each of ``users`` (cosine of user factors)."""
        return self._similar("row", users, N, "users")

    def _similar(self, axis, values, N, name):
        self._check_fitted()
        positions = self._positions(axis, values, name)
        N = _check_int("N", N, 1)
        factor = self.store_.factor(axis)
        queries = np.asarray(self.store_.factor_array(axis).oindex[positions], np.float64)
        norms = np.linalg.norm(queries, axis=1)
        queries = queries / np.where(norms > 0, norms, 1.0)[:, None]
        exclude = scipy.sparse.csr_matrix(
            (np.ones(positions.size), (np.arange(positions.size), positions)),
            shape=(positions.size, factor.shape[0]),
        )
        (result,) = dask.compute(topk(queries, factor, N, exclude=exclude, cosine=True,
                                      split_every=self.split_every))
        return self._labels(axis, result[0]), result[1]

    # ------------------------------------------------------------ fold-in, refresh
    def _new_rows(self, X, weights):
        """X (q new rows × m) as Ratings chunked like the model's columns, and R for them."""
        m = self.store_.length("col")
        chunk = (self.store_.chunk("row"), self.store_.chunk("col"))
        ratings = as_ratings(X, chunks=chunk)
        if ratings.shape[1] != m:
            raise ValueError(
                f"X must have one column per item of the model ({m}); got shape {ratings.shape}"
            )
        if ratings.chunks[1][0] != chunk[1]:
            ratings = as_ratings(ratings.rows.rechunk({1: chunk[1]}))
        q = ratings.shape[0]
        als = self.store_.meta["params"]["als"]
        if weights is None:
            weights = 1.0
        w = None if als else weight_vector("row_weights", weights, q, "new row")
        return ratings, w, als

    def transform(self, X, row_weights=None):
        """Fold in new rows: their exact factors with V fixed, without changing the model.

        ``X`` holds the new users' ratings (q × m, same items); ``row_weights`` (scalar
        or q values, default 1) are their R_i (ignored in plain ALS mode). Returns a
        lazy (q, k) dask array; rows without stored entries get zeros.
        """
        self._check_fitted()
        params = self.store_.meta["params"]
        ratings, w, als = self._new_rows(X, row_weights)
        ew = getattr(self, "entry_weights_", None)
        if ew is not None and not callable(ew):
            raise ValueError(
                "transform cannot weight new rows' entries with a fixed entry_weights matrix; "
                "fit with a function of the values (entry_weights=lambda r: ...) to fold in"
            )
        return _graph.build_projection(
            self.store_, ratings, "row", weights=w, unobserved_weight=params["unobserved_weight"],
            regularization=params["regularization"], als=als, entry_weights=ew,
        )

    def partial_fit(self, X, rows, row_weights=None):
        """Refresh the factors of existing ``rows`` from their ratings ``X``; returns self.

        Each row of ``X`` must be the row's *full* history (all its stored entries), not
        just new entries: the row is re-solved exactly with V fixed and written to the
        store as a new committed version. V is not changed (refit for that).
        """
        self._check_fitted()
        positions = self._positions("row", rows, "rows")
        if np.unique(positions).size != positions.size:
            raise ValueError("rows must not repeat")
        values = np.asarray(self.transform(X, row_weights))
        if values.shape[0] != positions.size:
            raise ValueError(f"X has {values.shape[0]} rows for {positions.size} rows")
        with writer_lock(self.store_.path, break_lock=self.break_lock):
            update = _graph.build_row_refresh(self.store_, "row", positions, values,
                                              self.split_every)
            (update,) = dask.compute(update)
            self.store_.commit([update])
        self.row_factors_ = self.store_.factor("row")
        return self

    def score(self, X):
        """Negative RMSE of the predictions u_i · v_j on the stored entries of ``X``.

        Higher is better (scikit-learn's convention); ``X`` holds held-out ratings of
        the fitted rows and columns.
        """
        from .metrics import rmse

        self._check_fitted()
        return -rmse(self, X, split_every=self.split_every)

    def loss(self, X=None):
        """The full objective at the current factors (on ``X``, default the fitted ratings)."""
        self._check_fitted()
        ratings = self.ratings_ if X is None else as_ratings(X, chunks=self.ratings_.chunks)
        ew = getattr(self, "entry_weights_", None)
        if X is not None and ew is not None and not callable(ew):
            raise ValueError("loss(X) with a fixed entry_weights matrix: pass X=None")
        return _evaluate_loss(self.store_, ratings, self.split_every, ew)


def _evaluate_loss(store, ratings, split_every=None, entry_weights=None):
    """The full objective of the store's current factors on ``ratings``, never forming UVᵀ."""
    params = store.meta["params"]
    w0 = params["unobserved_weight"]
    lam = params["regularization"] or 0.0
    U, V = store.factor("row"), store.factor("col")
    rw, cw = store.weights("row"), store.weights("col")
    blocks = ratings.rows.to_delayed()
    v_blocks = [b[0] for b in V.to_delayed()]
    u_blocks = [b[0] for b in U.to_delayed()]
    cw_blocks = [None] * len(v_blocks) if cw is None else list(cw.to_delayed())
    rw_blocks = [None] * len(u_blocks) if rw is None else list(rw.to_delayed())
    if entry_weights is None or callable(entry_weights):
        ew_blocks = np.full(blocks.shape, entry_weights, dtype=object)
    else:
        ew_blocks = entry_weights.rows.to_delayed()
    parts = [
        dask.delayed(_loss_task, pure=True)(
            list(blocks[i]), u_blocks[i], v_blocks, cw_blocks, rw_blocks[i],
            list(ew_blocks[i]))
        for i in range(blocks.shape[0])
    ]
    sums = _graph.tree_sum(parts, split_every)
    gu, gv = _graph.gramian(U, split_every), _graph.gramian(V, split_every)
    sums, gu, gv = dask.compute(sums, gu, gv)
    return _graph.full_loss(sums, gu, gv, w0, lam)


def _loss_task(blocks, x, factors, col_weights, row_weights, entry_weights):
    from . import _blockops, _kernels

    pieces = [
        _blockops.gather_piece(b, f, np.ones(f.shape[0]) if c is None else c, e)
        for b, f, c, e in zip(blocks, factors, col_weights, entry_weights)
    ]
    n_rows = x.shape[0]
    indptr, indices, data, ew, cg, vg = _blockops.stack_pieces(pieces, n_rows)
    if vg.shape[0] == 0:
        vg = np.zeros((0, x.shape[1]))
    r = np.zeros(n_rows) if row_weights is None else np.asarray(row_weights, np.float64)
    return _kernels.loss_block(
        indptr, indices, data, ew, r, cg, np.ascontiguousarray(x, dtype=np.float64), vg
    )


# ---------------------------------------------------------------------- resume
def _open_for_resume(path, shape, chunks, dtype, params, *, seed_given):
    """The store at ``path`` if it holds a compatible model to continue, else None."""
    try:
        store = FactorStore.open(path)
    except FileNotFoundError:
        return None
    meta = store.meta
    if not (store.has("row") and store.has("col")):
        return None  # interrupted before its initialisation was committed: start afresh
    expected = {
        "shape": list(shape), "n_components": params["n_components"], "dtype": dtype,
        "row_chunk": chunks[0], "col_chunk": chunks[1],
    }
    stored = {key: meta[key] for key in expected}
    for key in ("unobserved_weight", "regularization", "als", "regularization_mode") + (
            ("seed",) if seed_given else ()):
        expected[key] = params[key]
        stored[key] = meta["params"].get(key)
    diff = {key: (stored[key], expected[key]) for key in expected if stored[key] != expected[key]}
    if diff:
        detail = ", ".join(f"{key}: store has {a!r}, fit asks for {b!r}" for key, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume the model at {store.path!r}: {detail}. Fit with the store's "
            "settings, or pass resume=False and overwrite=True to start a new model there."
        )
    return store


def _store_path(store):
    """A local path (absolute) or URL string for ``store``; other types are refused."""
    if isinstance(store, (str, os.PathLike)):
        text = os.fspath(store)
        return text if "://" in text else os.path.abspath(os.path.expanduser(text))
    if hasattr(store, "get") and hasattr(store, "set"):  # a zarr store object
        return store
    raise ValueError(
        f"store must be a path, a URL or a zarr store; got {type(store).__name__} {store!r}. "
        "Pass for example store='model.zarr', or None for a temporary store."
    )


def _is_fresh(path):
    """A store created by a fit that never committed a sweep (safe to remove)."""
    if not isinstance(path, str) or "://" in path:
        return False
    try:
        return FactorStore.open(path, mode="r").meta["sweeps"] == 0
    except (FileNotFoundError, ValueError):
        return os.path.isdir(path) and not [
            c for c in os.listdir(path) if c not in ("zarr.json", "daskwals.lock")]


def _check_same_weights(store, rw, cw):
    for axis, given in (("row", rw), ("col", cw)):
        stored = store.weights(axis)
        same = (stored is None and given is None) or (
            stored is not None and given is not None
            and np.array_equal(np.asarray(stored), given)
        )
        if not same:
            raise ValueError(
                f"cannot resume the model at {store.path!r}: its {axis}_weights differ from "
                f"the ones given; pass the same {axis}_weights, or start a new model"
            )


# ---------------------------------------------------------------- validation
def _resolve_weights(row_weights, col_weights, n, m):
    if (row_weights is None) != (col_weights is None):
        raise ValueError(
            f"row_weights and col_weights must both be None (plain ALS) or both be given; got "
            f"row_weights={_short(row_weights)} and col_weights={_short(col_weights)}. Set the "
            "other one to None or to 1."
        )
    if row_weights is None:
        return None, None
    return (weight_vector("row_weights", row_weights, n, "row"),
            weight_vector("col_weights", col_weights, m, "column"))


def _check_init(name, init, length, k):
    if isinstance(init, str):
        if init != "random":
            raise ValueError(f"{name} must be 'random' or an array; got {init!r}")
        return None
    arr = init.compute() if isinstance(init, da.Array) else np.asarray(init)
    if arr.shape != (length, k):
        raise ValueError(
            f"{name} must have shape ({length}, {k}) (rows × n_components); got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}")
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ValueError(
            f"{name} must hold finite numbers; {len(bad)} are not, the first is {arr[i, j]} at "
            f"row {i}, component {j}. Pass finite initial factors or {name}='random'."
        )
    return np.asarray(arr, dtype=np.float64)


def open_model(store, ratings=None):
    """A fitted :class:`WALS` served from a model store, without refitting.

    Parameters
    ----------
    store : str, path or zarr store
        A store written by :meth:`WALS.fit` (or ``daskwals fit``).
    ratings : optional
        The ratings it was fitted on, for ``filter_already_liked`` and :meth:`WALS.loss`.

    Everything else needed to serve — factors, weights, Gramians, id maps and
    hyper-parameters — is in the store.
    """
    fs = FactorStore.open(store)
    meta = fs.meta
    if not (fs.has("row") and fs.has("col")):
        raise ValueError(f"the store at {fs.path!r} holds no initialised model yet")
    params = meta["params"]
    model = WALS(
        meta["n_components"], unobserved_weight=params["unobserved_weight"],
        regularization=params["regularization"], n_iter=meta["iterations"],
        seed=params.get("seed"), dtype=meta["dtype"], store=fs.path,
        row_weights=None if params["als"] else 1, col_weights=None if params["als"] else 1,
    )
    model.store_ = fs
    model.seed_ = params.get("seed")
    model.ratings_ = None if ratings is None else as_ratings(
        ratings, chunks=(meta["row_chunk"], meta["col_chunk"]))
    model.row_ids_ = fs.ids("row")
    model.col_ids_ = fs.ids("col")
    model.loss_history_ = list(meta["loss_history"])
    model.n_iter_ = meta["iterations"]
    model.row_factors_ = fs.factor("row")
    model.col_factors_ = fs.factor("col")
    return model
