"""WALS against the dense oracle, for any chunking and scheduler, and its validation."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import sparse

import daskwals
from daskwals import WALS, FactorStore, SingularSystemError

from . import oracle
from .conftest import dense_and_mask, random_ratings

K = 3


def inits(n, m, k=K, seed=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)), rng.standard_normal((m, k))


def fit(X, **kw):
    params = dict(n_iter=3, dtype="float64", seed=0)
    params.update(kw)
    return WALS(K, **params).fit(X)


def check_against_oracle(model, X, U0, V0, *, w0, lam, R, C, n_iter, rtol=1e-6):
    A, mask = dense_and_mask(X)
    U, V, hist = oracle.dense_wals(A, mask, U0, V0, w0=w0, lam=lam, row_weights=R,
                                   col_weights=C, n_iter=n_iter)
    np.testing.assert_allclose(np.asarray(model.row_factors_), U, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(np.asarray(model.col_factors_), V, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(model.loss_history_, hist, rtol=rtol)


@pytest.mark.parametrize(
    ("w0", "lam", "weights"),
    [
        (0.1, None, "scalar"),
        (0.5, 0.3, "vector"),
        (0.2, 0.1, "als"),
        (0.0, 0.5, "vector"),
    ],
)
def test_matches_dense_oracle(small, w0, lam, weights):
    n, m = small.shape
    rng = np.random.default_rng(2)
    R, C = {
        "scalar": (1.0, 1.0),
        "vector": (rng.random(n) * 3, rng.random(m) * 2),
        "als": (None, None),
    }[weights]
    U0, V0 = inits(n, m)
    model = fit(small, unobserved_weight=w0, regularization=lam, row_weights=R,
                col_weights=C, row_init=U0, col_init=V0, chunks=(7, 6))
    check_against_oracle(model, small, U0, V0, w0=w0, lam=lam, R=R, C=C, n_iter=3)


@pytest.mark.parametrize(
    "chunks", [(1, 1), (4, 3), (30, 20), (7, 100), (100, 2), (16, 5)],
)
@pytest.mark.parametrize("split_every", [None, 2])
def test_chunk_invariance(chunks, split_every):
    """Empty rows, empty columns and blocks with no entries at all give the same answer."""
    X = random_ratings(32, 24, 0.25, seed=4, empty_rows=(0, 5, 6, 7, 30),
                       empty_cols=(1, 12, 13, 14, 15))
    X = X.tolil()
    X[16:, 16:] = 0  # a region of blocks without entries
    X = X.tocsr()
    X.eliminate_zeros()
    U0, V0 = inits(32, 24)
    model = fit(X, unobserved_weight=0.3, regularization=0.2, row_weights=2.0,
                col_weights=0.5, row_init=U0, col_init=V0, chunks=chunks,
                split_every=split_every)
    check_against_oracle(model, X, U0, V0, w0=0.3, lam=0.2, R=2.0, C=0.5, n_iter=3)
    # rows and columns with no stored entries get their exact minimiser, zero
    np.testing.assert_array_equal(np.asarray(model.row_factors_)[[0, 5, 30]], 0.0)
    np.testing.assert_array_equal(np.asarray(model.col_factors_)[[1, 12]], 0.0)


def test_random_init_does_not_depend_on_chunking(small):
    a = fit(small, n_iter=0, chunks=(4, 3))
    b = fit(small, n_iter=0, chunks=(30, 20))
    np.testing.assert_array_equal(np.asarray(a.row_factors_), np.asarray(b.row_factors_))
    np.testing.assert_array_equal(np.asarray(a.col_factors_), np.asarray(b.col_factors_))
    c = fit(small, n_iter=0, seed=1)
    assert not np.allclose(np.asarray(a.row_factors_), np.asarray(c.row_factors_))
    u = np.asarray(a.row_factors_)
    assert abs(u.mean()) < 0.5 and 0.6 < u.std() < 1.4  # N(0, 1) entries


def test_loss_never_rises_and_equals_the_objective():
    X = random_ratings(60, 45, 0.15, seed=9)
    model = WALS(5, n_iter=8, regularization=0.05, unobserved_weight=0.05, seed=3,
                 dtype="float64", chunks=(13, 11)).fit(X)
    hist = np.array(model.loss_history_)
    assert np.all(np.diff(hist) <= 1e-9 * hist[:-1])
    A, mask = dense_and_mask(X)
    W = oracle.weights_matrix(mask, 0.05, 1.0, 1.0)
    U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    assert hist[-1] == pytest.approx(oracle.loss(A, W, U, V, 0.05), rel=1e-9)
    assert model.loss() == pytest.approx(hist[-1], rel=1e-9)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_local_schedulers_agree(small, scheduler):
    U0, V0 = inits(*small.shape)
    with dask.config.set(scheduler=scheduler):
        model = fit(small, row_init=U0, col_init=V0, regularization=0.1, chunks=(8, 5))
    check_against_oracle(model, small, U0, V0, w0=0.1, lam=0.1, R=1.0, C=1.0, n_iter=3)


def test_distributed_local_cluster_agrees(small, client, tmp_path):
    """Worker processes write the factors into a store on disk; the numbers do not change."""
    U0, V0 = inits(*small.shape)
    model = fit(small, row_init=U0, col_init=V0, regularization=0.1, chunks=(8, 5),
                store=tmp_path / "m.zarr")
    check_against_oracle(model, small, U0, V0, w0=0.1, lam=0.1, R=1.0, C=1.0, n_iter=3)
    seeded = fit(small, regularization=0.1, chunks=(8, 5), seed=11)
    with dask.config.set(scheduler="sync"):
        local = fit(small, regularization=0.1, chunks=(8, 5), seed=11)
    np.testing.assert_allclose(np.asarray(seeded.col_factors_), np.asarray(local.col_factors_),
                               rtol=1e-12)


def test_float32_storage_close_to_float64(small):
    a = fit(small, dtype="float64", regularization=0.1)
    b = fit(small, dtype="float32", regularization=0.1)
    assert b.row_factors_.dtype == np.float32
    np.testing.assert_allclose(np.asarray(b.row_factors_), np.asarray(a.row_factors_),
                               rtol=1e-3, atol=1e-4)
    assert b.loss_history_[-1] == pytest.approx(a.loss_history_[-1], rel=1e-4)


def test_gramian_cache_gives_same_numbers(small):
    a = fit(small, use_gramian_cache=True, regularization=0.1, chunks=(8, 5))
    b = fit(small, use_gramian_cache=False, regularization=0.1, chunks=(8, 5), split_every=2)
    np.testing.assert_allclose(np.asarray(a.col_factors_), np.asarray(b.col_factors_),
                               rtol=1e-10)


def test_every_input_type_gives_the_same_model(small):
    ref = np.asarray(fit(small, chunks=(8, 5), regularization=0.1).col_factors_)
    coo = sparse.COO.from_scipy_sparse(small)
    for X in (
        small.tocoo(), scipy.sparse.csr_array(small), coo, sparse.GCXS(coo),
        da.from_array(coo, chunks=(8, 5), asarray=False),
        daskwals.Ratings.from_scipy(small, chunks=(8, 5)),
    ):
        got = np.asarray(fit(X, chunks=(8, 5), regularization=0.1).col_factors_)
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_stored_zeros_change_the_model(small):
    dropped = small.copy()
    dropped.eliminate_zeros()
    assert dropped.nnz == small.nnz - 2
    a = np.asarray(fit(small, regularization=0.1).row_factors_)
    b = np.asarray(fit(dropped, regularization=0.1).row_factors_)
    assert not np.allclose(a, b)


def test_store_keeps_the_model(small, tmp_path):
    path = tmp_path / "model.zarr"
    model = fit(small, store=path, regularization=0.1, n_iter=2)
    store = FactorStore.open(path, mode="r")
    meta = store.meta
    assert meta["sweeps"] == 4 and meta["iterations"] == 2
    assert meta["loss_history"] == pytest.approx(model.loss_history_)
    assert meta["params"]["regularization"] == 0.1
    np.testing.assert_array_equal(np.asarray(store.factor("row")), np.asarray(model.row_factors_))
    U = np.asarray(model.row_factors_)
    np.testing.assert_allclose(store.gramian("row"), U.T @ U, rtol=1e-10)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fit(small, store=path)
    fit(small, store=path, overwrite=True, n_iter=1)
    assert FactorStore.open(path).meta["iterations"] == 1


def test_singular_system_names_the_fix():
    X = scipy.sparse.csr_matrix(([1.0, 2.0], ([0, 0], [0, 1])), shape=(4, 5))
    with pytest.raises(SingularSystemError, match=r"(?s)row 0 .*2 stored entries.*regularization"):
        WALS(3, unobserved_weight=0.0, regularization=None, seed=0).fit(X)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_components=0), "n_components must be an integer ≥ 1; got 0"),
        (dict(n_components=2.5), "n_components"),
        (dict(n_iter=-1), "n_iter"),
        (dict(unobserved_weight=-0.1), "unobserved_weight must be a finite number ≥ 0"),
        (dict(regularization=-1.0), "regularization must be"),
        (dict(row_weights=None), "both be None"),
        (dict(row_weights=-1.0), "row_weights must be finite and ≥ 0"),
        (dict(col_weights=np.ones(3)), r"col_weights must be a scalar or have one value per col"),
        (dict(row_init="glorot"), "row_init must be 'random' or an array"),
        (dict(col_init=np.ones((20, 5))), r"col_init must have shape \(20, 3\)"),
        (dict(dtype="int8"), "dtype must be 'float32' or 'float64'"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_parameters(small, kwargs, message, tmp_path):
    params = dict(n_components=K, store=tmp_path / "s.zarr")
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        WALS(**params).fit(small)
    assert not (tmp_path / "s.zarr").exists()  # nothing written


def test_params_api(small):
    model = WALS(4, regularization=0.2)
    assert model.get_params()["regularization"] == 0.2
    assert model.set_params(n_iter=2) is model and model.n_iter == 2
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(bogus=1)
    assert "regularization=0.2" in repr(model)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.recommend([0])
    assert model.fit(small) is model and model.n_iter_ == 2


def test_recommend_matches_brute_force(small):
    model = fit(small, regularization=0.1, chunks=(8, 5))
    U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    users = np.array([0, 3, 29, 0])
    ids, scores = model.recommend(users, N=4, batch_size=3)
    for row, u in enumerate(users):
        s = U[u] @ V.T
        s[small[u].indices] = -np.inf
        expected = np.argsort(-s, kind="stable")[:4]
        np.testing.assert_allclose(scores[row], s[expected], rtol=1e-12)
        assert set(ids[row]) == set(expected) or np.allclose(np.sort(s[ids[row]]),
                                                             np.sort(s[expected]))
    all_ids, _ = model.recommend([3], N=20, filter_already_liked=False)
    assert sorted(all_ids[0]) == list(range(20))


def test_non_finite_factors_stop_the_fit_and_keep_the_last_sweep(tmp_path):
    """Ratings beyond float32's range overflow the stored factors: a clear error, store intact."""
    X = random_ratings(20, 15, 0.4, seed=2)
    model = fit(X, store=tmp_path / "m.zarr", dtype="float32", n_iter=1, regularization=0.1)
    before = np.asarray(model.row_factors_).copy()
    huge = X * 1e40  # solutions beyond float32's range
    with pytest.raises(FloatingPointError, match=r"(?s)not finite.*dtype='float64'"):
        fit(huge, store=tmp_path / "m.zarr", dtype="float32", n_iter=2, regularization=0.1,
            resume=True)
    store = FactorStore.open(tmp_path / "m.zarr")
    assert store.meta["sweeps"] == 2
    np.testing.assert_array_equal(np.asarray(store.factor("row")), before)


def _entry_oracle(X, E, U0, V0, w0, lam, n_iter, R=1.0, C=1.0):
    A, mask = dense_and_mask(X)
    r = np.broadcast_to(np.asarray(R, float), (A.shape[0],))
    c = np.broadcast_to(np.asarray(C, float), (A.shape[1],))
    W = w0 + np.outer(r, c) * E * mask
    U, V = U0, V0
    hist = []
    for _ in range(n_iter):
        U = oracle.solve_rows(A, W, V, lam)
        V = oracle.solve_rows(A.T, W.T, U, lam)
        hist.append(oracle.loss(A, W, U, V, lam))
    return U, V, hist


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("form", ["function", "matrix"])
def test_entry_weights_match_the_oracle(small, form, cache):
    n, m = small.shape
    U0, V0 = inits(n, m)
    alpha = 2.5
    if form == "function":
        ew = lambda r: alpha * np.log1p(r)  # noqa: E731
    else:
        ew = small.copy()
        ew.data = alpha * np.log1p(ew.data)
    R = np.random.default_rng(0).random(n)
    model = fit(small, entry_weights=ew, row_weights=R, col_weights=0.5, unobserved_weight=0.2,
                regularization=0.1, row_init=U0, col_init=V0, chunks=(8, 6),
                use_factors_weights_cache=cache)
    E = alpha * np.log1p(small.toarray())
    U, V, hist = _entry_oracle(small, E, U0, V0, 0.2, 0.1, 3, R=R, C=0.5)
    np.testing.assert_allclose(np.asarray(model.row_factors_), U, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(model.col_factors_), V, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.loss_history_, hist, rtol=1e-9)
    assert model.loss() == pytest.approx(hist[-1], rel=1e-9)


def test_entry_weights_refusals(small):
    with pytest.raises(ValueError, match=r"entry_weights must be finite and ≥ 0.*first is -1"):
        fit(small, entry_weights=lambda r: r - 2.0)
    other = small.copy()
    other.data[:] = 1.0
    other = other[:, ::-1].tocsr()
    with pytest.raises(ValueError, match="same pattern"):
        fit(small, entry_weights=other)
    with pytest.raises(ValueError, match="plain ALS"):
        fit(small, entry_weights=lambda r: r, row_weights=None, col_weights=None)
    with pytest.raises(ValueError, match="return one weight per value"):
        fit(small, entry_weights=lambda r: r[:1])


def test_frequency_regularization_matches_the_oracle(small):
    """ALS-WR: row i's ridge is λ·n_i, and the objective uses λ(Σ n_i‖u_i‖² + Σ m_j‖v_j‖²)."""
    n, m = small.shape
    U0, V0 = inits(n, m)
    lam, w0 = 0.3, 0.2
    model = fit(small, regularization=lam, unobserved_weight=w0, row_init=U0, col_init=V0,
                regularization_mode="frequency", chunks=(8, 6))
    A, mask = dense_and_mask(small)
    W = oracle.weights_matrix(mask, w0, 1.0, 1.0)
    n_row, n_col = mask.sum(1), mask.sum(0)
    k = U0.shape[1]

    def solve(A, W, V, counts):
        out = np.zeros((A.shape[0], k))
        for i in range(A.shape[0]):
            lhs = (V * W[i][:, None]).T @ V + lam * counts[i] * np.eye(k)
            out[i] = np.linalg.solve(lhs, V.T @ (W[i] * A[i]))
        return out

    U, V, hist = U0, V0, []
    for _ in range(3):
        U = solve(A, W, V, n_row)
        V = solve(A.T, W.T, U, n_col)
        hist.append(float(np.sum(W * (A - U @ V.T) ** 2)
                          + lam * (n_row @ (U**2).sum(1) + n_col @ (V**2).sum(1))))
    np.testing.assert_allclose(np.asarray(model.row_factors_), U, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(model.col_factors_), V, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.loss_history_, hist, rtol=1e-9)


def test_cg_solver_is_approximate_and_converges_to_the_exact_solves():
    X = random_ratings(60, 45, 0.15, seed=9)
    exact = WALS(4, n_iter=6, seed=3, dtype="float64", regularization=0.1, chunks=(13, 11)).fit(X)
    many = WALS(4, n_iter=6, seed=3, dtype="float64", regularization=0.1, chunks=(13, 11),
                solver="cg", cg_steps=12).fit(X)
    few = WALS(4, n_iter=6, seed=3, dtype="float64", regularization=0.1, chunks=(13, 11),
               solver="cg", cg_steps=2).fit(X)
    # with at least k steps CG is exact in exact arithmetic
    np.testing.assert_allclose(np.asarray(many.row_factors_), np.asarray(exact.row_factors_),
                               rtol=1e-5, atol=1e-7)
    assert few.loss_history_[-1] >= exact.loss_history_[-1] * (1 - 1e-9)
    assert few.loss_history_[-1] <= exact.loss_history_[0]
    assert few.loss_history_[-1] == pytest.approx(exact.loss_history_[-1], rel=0.05)
    with pytest.raises(ValueError, match="solver must be 'cholesky' or 'cg'"):
        WALS(4, solver="lu").fit(X)
    with pytest.raises(ValueError, match="regularization_mode"):
        WALS(4, regularization_mode="per-row").fit(X)


def test_reproduces_implicit_on_non_binary_data():
    """implicit's model: confidence alpha·r on stored entries, 1 elsewhere, preference 1.

    In daskwals: A = the stored pattern (values 1), W0 = 1, R = C = 1 and
    entry_weights = alpha·r − 1, so W = 1 + (alpha·r − 1) = alpha·r on stored entries.
    """
    implicit_als = pytest.importorskip("implicit.cpu.als")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(4)
    n, m, k, alpha, lam = 80, 50, 4, 3.0, 0.5
    mask = rng.random((n, m)) < 0.15
    r = np.where(mask, rng.integers(1, 6, size=(n, m)), 0).astype(np.float32)
    counts = scipy.sparse.csr_matrix(r)
    U0 = rng.standard_normal((n, k)).astype(np.float32) * 0.1
    V0 = rng.standard_normal((m, k)).astype(np.float32) * 0.1
    with threadpoolctl.threadpool_limits(1, "blas"):
        ref = implicit_als.AlternatingLeastSquares(
            factors=k, regularization=lam, alpha=alpha, iterations=3, use_cg=False,
            calculate_training_loss=False, num_threads=1, random_state=0)
        ref.user_factors, ref.item_factors = U0.copy(), V0.copy()
        ref.fit(counts, show_progress=False)
    pattern = counts.copy()
    pattern.data[:] = 1.0
    ew = counts.copy()
    ew.data = alpha * ew.data - 1.0
    model = WALS(k, unobserved_weight=1.0, regularization=lam, row_weights=1.0,
                 col_weights=1.0, entry_weights=ew, n_iter=3, row_init=U0, col_init=V0,
                 dtype="float64", chunks=(20, 25)).fit(pattern)
    # implicit works in float32: agreement to its precision
    np.testing.assert_allclose(np.asarray(model.row_factors_), ref.user_factors, rtol=2e-3,
                               atol=2e-4)
    np.testing.assert_allclose(np.asarray(model.col_factors_), ref.item_factors, rtol=2e-3,
                               atol=2e-4)
