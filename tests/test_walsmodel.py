"""WALSModel: TF 1.x's published numbers, a dense oracle, laziness, stores and validation."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import sparse

from daskwals import Ratings, SingularSystemError, WALSModel

from . import oracle
from . import tf_wals_fixture as fx
from .conftest import dense_and_mask, random_ratings
from .tf_wals_fixture import tf_slice

CACHES = [(True, True), (False, True), (True, False), (False, False)]
CACHE_IDS = ["both-caches", "no-factor-cache", "no-gramian-cache", "no-caches"]


def run(*ops):
    """TF's ``sess.run(op)``, one op after the other."""
    for op in ops:
        dask.compute(op)


def prepare(model, axis):
    run(getattr(model, f"{axis}_update_prep_gramian_op"),
        getattr(model, f"initialize_{axis}_update_op"))


def values(views):
    return [np.asarray(v) for v in dask.compute(*views)]


def current(model):
    """(U, V) as float64 NumPy arrays."""
    return fx.flat(values(model.row_factors)), fx.flat(values(model.col_factors))


def tf_model(**kwargs):
    return WALSModel(5, 7, 3, **fx.MODEL_ARGS, seed=0, **kwargs)


def distinct(sp, along):
    return np.unique(sp.tocoo().row if along == 0 else sp.tocoo().col).size


# ----------------------------------------------------------- TF's process-input tests
def _scenario(transposed):
    """TF's minibatches, projections and expectations, plain or transposed."""
    R, C = fx.ROW_FACTORS, fx.COL_FACTORS
    if not transposed:
        rows = [tf_slice([0, 2]), tf_slice([1, 4], shuffle_seed=1), tf_slice([3], shuffle_seed=2)]
        cols = [tf_slice(cols=[2, 0]), tf_slice(cols=[5, 3, 1], shuffle_seed=3),
                tf_slice(cols=[4, 6]), tf_slice(cols=[3, 6], shuffle_seed=4)]
        return dict(
            rows=rows, row_once=rows, cols=cols, col_once=cols[:3], row_axis=0, col_axis=1,
            row_proj=(tf_slice([1, 4]), [0.2, 0.5], [R[0][1], R[1][1]], fx.PROJECTED_ROWS_1_4),
            col_proj=(tf_slice(cols=[5, 3, 1]), [0.6, 0.4, 0.2], [C[2][0], C[1][0], C[0][1]],
                      fx.PROJECTED_COLS_5_3_1),
        )
    r1 = tf_slice([4, 1], transpose=True, shuffle_seed=5)
    rows = [tf_slice([0, 3], transpose=True), r1, tf_slice([2], transpose=True), r1]
    c2 = tf_slice(cols=[5], transpose=True, shuffle_seed=6)
    c3 = tf_slice(cols=[3, 6], transpose=True)
    cols = [tf_slice(cols=[0, 1], transpose=True), tf_slice(cols=[4, 2], transpose=True), c2, c3,
            c2]
    return dict(
        rows=rows, row_once=rows[:3], cols=cols, col_once=cols[:4], row_axis=1, col_axis=0,
        row_proj=(tf_slice([4, 1], transpose=True), [0.5, 0.2], [R[1][1], R[0][1]],
                  fx.PROJECTED_ROWS_1_4[::-1]),
        col_proj=(c3, [0.4, 0.7], [C[1][0], C[2][1]], fx.PROJECTED_COLS_3_6),
    )


def _true_loss(model):
    A, mask = dense_and_mask(scipy.sparse.csr_matrix(fx.INPUT_MATRIX.astype(np.float64)))
    W = oracle.weights_matrix(mask, 0.1, fx.flat(fx.ROW_WEIGHTS), fx.flat(fx.COL_WEIGHTS))
    U, V = current(model)
    return oracle.loss(A, W, U, V, 0.01)


@pytest.mark.parametrize("transposed", [False, True], ids=["plain", "transposed"])
@pytest.mark.parametrize(("factors_cache", "gramian_cache"), CACHES, ids=CACHE_IDS)
def test_tf_process_input(factors_cache, gramian_cache, transposed):
    s = _scenario(transposed)
    model = tf_model(use_factors_weights_cache=factors_cache, use_gramian_cache=gramian_cache)
    run(model.initialize_op, model.worker_init)

    prepare(model, "row")
    for batch in s["rows"]:
        run(model.update_row_factors(batch, transpose_input=transposed).update_op)
    got = values(model.row_factors)
    for shard, want in zip(got, fx.ROW_FACTORS):
        np.testing.assert_allclose(shard, want, atol=1e-3)
    sp, weights, want_weighted, want_plain = s["row_proj"]
    weighted, plain = dask.compute(
        model.project_row_factors(sp, transpose_input=transposed, projection_weights=weights),
        model.project_row_factors(sp, transpose_input=transposed),
    )
    np.testing.assert_allclose(weighted, want_weighted, atol=1e-3)
    np.testing.assert_allclose(plain, want_plain, atol=1e-3)
    # the minibatch losses, rescaled by |I|/n and summed over a partition of the rows,
    # are the full objective (TF's loss test, err 1e-3)
    parts = [model.update_row_factors(b, transpose_input=transposed) for b in s["row_once"]]
    terms = dask.compute(*[(p.unregularized_loss, p.regularization) for p in parts])
    total = sum((u + r) * distinct(b, s["row_axis"]) / 5 for (u, r), b in zip(terms, s["row_once"]))
    assert total == pytest.approx(_true_loss(model), abs=1e-3)

    prepare(model, "col")
    for batch in s["cols"]:
        run(model.update_col_factors(batch, transpose_input=transposed).update_op)
    for shard, want in zip(values(model.col_factors), fx.COL_FACTORS):
        np.testing.assert_allclose(shard, want, atol=1e-3)
    np.testing.assert_allclose(values(model.row_factors)[0], got[0])  # rows untouched
    sp, weights, want_weighted, want_plain = s["col_proj"]
    weighted, plain = dask.compute(
        model.project_col_factors(sp, transpose_input=transposed, projection_weights=weights),
        model.project_col_factors(sp, transpose_input=transposed),
    )
    np.testing.assert_allclose(weighted, want_weighted, atol=1e-3)
    np.testing.assert_allclose(plain, want_plain, atol=1e-3)
    parts = [model.update_col_factors(b, transpose_input=transposed) for b in s["col_once"]]
    terms = dask.compute(*[(p.unregularized_loss, p.regularization) for p in parts])
    total = sum((u + r) * distinct(b, s["col_axis"]) / 7 for (u, r), b in zip(terms, s["col_once"]))
    assert total == pytest.approx(_true_loss(model), abs=1e-3)


@pytest.mark.parametrize(("axis", "want"), [("row", fx.SUM_WEIGHTS_ROWS),
                                            ("col", fx.SUM_WEIGHTS_COLS)])
def test_tf_sum_weights(axis, want):
    model = WALSModel(5, 5, 5, **fx.SUM_WEIGHTS_ARGS, use_factors_weights_cache=False, seed=0)
    run(model.initialize_op, model.worker_init)
    r, c, v = fx.SUM_WEIGHTS_ENTRIES
    sp = scipy.sparse.coo_matrix((v, (r, c)), shape=(5, 5))
    update = model.update_row_factors if axis == "row" else model.update_col_factors
    (got,) = dask.compute(update(sp, transpose_input=False).sum_weights)
    assert got == pytest.approx(want, abs=1e-3)


# ----------------------------------------------------------- ALS = zero weights
@pytest.mark.parametrize("factors_cache", [True, False])
def test_tf_als_equals_zero_weights(factors_cache):
    col_init = np.random.default_rng(0).random((7, 3))
    models = [
        WALSModel(5, 7, 3, col_init=col_init, row_weights=w, col_weights=w,
                  use_factors_weights_cache=factors_cache, seed=1)
        for w in (None, 0)
    ]
    full = tf_slice(range(5))
    for model in models:
        run(model.initialize_op, model.worker_init)
        prepare(model, "row")
        run(model.update_row_factors(full).update_op)
    als, wals = models
    u_als, u_wals = (fx.flat(values(m.row_factors)) for m in models)
    np.testing.assert_allclose(u_als, u_wals, atol=1e-6)
    # the projection weight does not matter in ALS mode (TF ignores it)
    proj = als.project_row_factors(full, projection_weights=[5.0]).compute()
    np.testing.assert_allclose(proj, u_wals, atol=1e-5)

    sp_c = tf_slice(cols=[2, 0], shuffle_seed=7)
    for model in models:
        prepare(model, "col")
        run(model.update_col_factors(sp_c).update_op)
    v_als, v_wals = (fx.flat(values(m.col_factors)) for m in models)
    np.testing.assert_allclose(v_als, v_wals, atol=1e-6)
    untouched = [1, 3, 4, 5, 6]
    np.testing.assert_allclose(v_als[untouched], col_init[untouched].astype(np.float32))
    proj = als.project_col_factors(tf_slice(cols=[2, 0])).compute()
    np.testing.assert_allclose(proj, v_wals[[2, 0]], atol=1e-5)


@pytest.mark.parametrize("factors_cache", [True, False])
def test_tf_als_transposed(factors_cache):
    col_init = np.random.default_rng(1).random((7, 3))
    als = WALSModel(5, 7, 3, col_init=col_init, row_weights=None, col_weights=None,
                    use_factors_weights_cache=factors_cache, seed=2)
    wals = WALSModel(5, 7, 3, col_init=col_init, row_weights=[0] * 5, col_weights=[0] * 7,
                     use_factors_weights_cache=factors_cache, seed=2)
    for model in (als, wals):
        run(model.initialize_op, model.worker_init)
        prepare(model, "row")
    before = fx.flat(values(als.row_factors))
    run(als.update_row_factors(tf_slice([3, 1], transpose=True), transpose_input=True).update_op)
    run(wals.update_row_factors(tf_slice([3, 1])).update_op)
    u_als, u_wals = fx.flat(values(als.row_factors)), fx.flat(values(wals.row_factors))
    np.testing.assert_allclose(u_als[[1, 3]], u_wals[[1, 3]], atol=1e-6)
    np.testing.assert_array_equal(u_als[[0, 2, 4]], before[[0, 2, 4]])  # absent: untouched
    np.testing.assert_array_equal(u_wals[[0, 2, 4]], before[[0, 2, 4]])  # same seed
    proj = als.project_row_factors(tf_slice([3, 1], transpose=True), transpose_input=True)
    np.testing.assert_allclose(proj.compute(), u_wals[[3, 1]], atol=1e-5)  # appearance order


# ----------------------------------------------------------- TF's training tests
def simple_train(model, inp, iterations):
    """TF's simple_train: the ops are built once, before initialisation, and rerun."""
    row_op = model.update_row_factors(inp).update_op
    col_op = model.update_col_factors(inp).update_op
    run(model.initialize_op, model.worker_init)
    for _ in range(iterations):
        prepare(model, "row")
        run(row_op)
        prepare(model, "col")
        run(col_op)


@pytest.mark.parametrize(("weights", "factors_cache"), [((None, None), True), ((0, [0] * 11), False)],
                         ids=["als-cache", "zero-weights-no-cache"])
def test_tf_train_full_low_rank(weights, factors_cache):
    rng = np.random.default_rng(3)
    data = (rng.random((15, 3)) @ rng.random((3, 11)) / 3).astype(np.float32)
    model = WALSModel(15, 11, 3, regularization=1e-5, row_weights=weights[0],
                      col_weights=weights[1], use_factors_weights_cache=factors_cache, seed=4)
    simple_train(model, scipy.sparse.coo_matrix(data), 25)
    U, V = current(model)
    np.testing.assert_allclose(U @ V.T, data, rtol=0.01, atol=0.01)


@pytest.mark.parametrize("factors_cache", [True, False])
def test_tf_train_matrix_completion(factors_cache):
    rng = np.random.default_rng(5)
    rows, cols = 11, 9
    data = (rng.random((rows, 3)) @ rng.random((3, cols)) / 3).astype(np.float32)
    i, j = np.nonzero(np.add.outer(np.arange(rows), np.arange(cols)) % 4 == 0)
    inp = scipy.sparse.coo_matrix((data[i, j], (i, j)), shape=(rows, cols))
    model = WALSModel(rows, cols, 4, unobserved_weight=0.01, regularization=0.001,
                      row_weights=0.1 + rng.random(rows), col_weights=0.1 + rng.random(cols),
                      use_factors_weights_cache=factors_cache, seed=6)
    simple_train(model, inp, 25)
    U, V = current(model)
    out = U @ V.T
    kept = np.zeros((rows, cols), bool)
    kept[i, j] = True
    assert np.all(np.abs(out - data)[kept] < 0.4)
    assert np.all(np.abs(out)[~kept] < 0.5)


def test_tf_full_batch_factorization():
    """TF's full-batch scenario: sharded row and column inits, weights 1, losses.

    Every component of the initial factors is equal, so the exact iterates keep equal
    components and each system is rank-one plus λI. TF's float32 solves scatter the
    components of its published factors around their mean, which is the exact value:
    by about 1e-3 in the first sweep and 3e-2 in the second row sweep, after which the
    round-off has grown into a different solution (the exact iteration cannot leave
    the equal-components subspace), so the second column sweep is not a reference.
    """
    model = WALSModel(
        5, 7, 3, unobserved_weight=0.1, regularization=0.01,
        row_init=[np.full((3, 3), 2.0), np.full((2, 3), 2.0)],
        col_init=[np.ones((3, 3)), np.ones((2, 3)), np.ones((2, 3))],
        num_row_shards=2, num_col_shards=3, row_weights=1.0, col_weights=1.0,
        use_factors_weights_cache=False,
    )
    rows = model.update_row_factors(tf_slice(range(5)))
    cols = model.update_col_factors(tf_slice(range(7), matrix=fx.INPUT_MATRIX.T),
                                    transpose_input=True)
    run(model.initialize_op, model.worker_init)
    assert [w.tolist() for w in values(model.row_weights)] == [[1, 1, 1], [1, 1]]
    assert [w.tolist() for w in values(model.col_weights)] == [[1, 1, 1], [1, 1], [1, 1]]
    np.testing.assert_array_equal(fx.flat(values(model.row_factors)), 2.0)

    def check(axis, published, sweep):
        got = fx.flat(values(getattr(model, f"{axis}_factors")))
        published = fx.flat(published)
        if sweep == 0:
            np.testing.assert_allclose(got, published, atol=2e-3)
        np.testing.assert_allclose(got, np.repeat(published.mean(1, keepdims=True), 3, 1),
                                   atol=1e-5)

    for update, axis, sweep in ((rows, "row", 0), (cols, "col", 0), (rows, "row", 1)):
        prepare(model, axis)
        for _ in range(2):  # the second run checks that the solve is idempotent
            run(update.update_op)
            check("row", fx.FULL_BATCH_ROWS[sweep], sweep)
            if axis == "col" or sweep:
                check("col", fx.FULL_BATCH_COLS[0], 0)
        loss = sum(dask.compute(update.unregularized_loss, update.regularization))
        want = (fx.FULL_BATCH_ROW_LOSS if axis == "row" else fx.FULL_BATCH_COL_LOSS)[sweep]
        assert loss == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------- against the dense oracle
N, M, K = 30, 20, 4
W0, LAM = 0.2, 0.05


@pytest.fixture(scope="module")
def problem():
    X = random_ratings(N, M, 0.3, seed=11, zeros=2)
    # no empty row or column: the dense oracle would set them to 0, an update skips them
    assert X.getnnz(axis=1).min() > 0 and X.getnnz(axis=0).min() > 0
    rng = np.random.default_rng(12)
    R, C = rng.random(N) + 0.5, rng.random(M) + 0.5
    return X, R, C


def oracle_model(R, C, **kwargs):
    model = WALSModel(N, M, K, unobserved_weight=W0, regularization=LAM, row_weights=R,
                      col_weights=C, dtype="float64", chunks=(7, 6), seed=3, **kwargs)
    run(model.initialize_op, model.worker_init)
    return model


def batch(X, rows):
    """The stored entries of ``rows`` of X, row after row in the order given."""
    csr = X.tocsr()
    parts = [csr[[r]].tocoo() for r in rows]
    r = np.concatenate([np.full(p.nnz, row) for p, row in zip(parts, rows)])
    c = np.concatenate([p.col for p in parts])
    v = np.concatenate([p.data for p in parts])
    return scipy.sparse.coo_matrix((v, (r, c)), shape=X.shape)


def dense_terms(A, mask, W, rows, U_new, V, n):
    """TF's three loss terms from their meaning: the dense loss of the rows, rescaled."""
    s = n / len(rows)
    err = W[rows] * (A[rows] - U_new @ V.T) ** 2
    unreg = s * err.sum()
    reg = LAM * (s * np.sum(U_new**2) + np.sum(V**2))
    sum_weights = W0 * A.size + s * (W[rows] - W0).sum()
    return unreg, reg, sum_weights


ROWS = [12, 0, 29, 8, 13]


def to_sparse(sp):
    """A ``sparse.COO`` keeping stored zeros (``from_scipy_sparse`` drops a COO's zeros)."""
    coo = sp.tocoo()
    return sparse.COO(np.stack([coo.row, coo.col]), coo.data.copy(), shape=coo.shape,
                      prune=False)


def dask_sparse(sp, chunks):
    """A plain dask array with ``sparse.COO`` blocks (built without sparse's slicing JIT)."""
    return Ratings.from_scipy(sp, chunks=chunks).rows


def as_kind(sp, kind):
    if kind == "coo":
        return sp
    if kind == "csr":
        return sp.tocsr()
    if kind == "sparse":
        return to_sparse(sp)
    if kind == "dask":
        return dask_sparse(sp, (4, 5))
    return Ratings.from_scipy(sp, chunks=(9, 8))


@pytest.mark.parametrize("kind", ["coo", "csr", "sparse", "dask", "ratings"])
def test_row_update_matches_oracle(problem, kind):
    X, R, C = problem
    model = oracle_model(R, C)
    U0, V0 = current(model)
    res = model.update_row_factors(as_kind(batch(X, ROWS), kind))
    new, unreg, reg, sw = dask.compute(res.new_values, res.unregularized_loss,
                                       res.regularization, res.sum_weights)
    np.testing.assert_array_equal(current(model)[0], U0)  # nothing written yet

    A, mask = dense_and_mask(X)
    W = oracle.weights_matrix(mask, W0, R, C)
    want = oracle.solve_rows(A[ROWS], W[ROWS], V0, LAM)
    order = ROWS if kind == "coo" else sorted(ROWS)  # first appearance / ascending
    np.testing.assert_allclose(new, want[[ROWS.index(r) for r in order]], rtol=1e-9)
    np.testing.assert_allclose([unreg, reg, sw], dense_terms(A, mask, W, ROWS, want, V0, N),
                               rtol=1e-9)

    run(res.update_op)
    U1, V1 = current(model)
    expected = U0.copy()
    expected[ROWS] = want
    np.testing.assert_allclose(U1, expected, rtol=1e-9)
    np.testing.assert_array_equal(np.delete(U1, ROWS, 0), np.delete(U0, ROWS, 0))
    np.testing.assert_array_equal(V1, V0)


def test_col_update_both_orientations_match_oracle(problem):
    X, R, C = problem
    model = oracle_model(R, C)
    U0, V0 = current(model)
    cols = [3, 17, 9]
    sub = batch(X.T.tocsr(), cols).T.tocoo()  # columns 3, 17, 9 of A, in A's orientation
    plain = model.update_col_factors(sub, transpose_input=False)
    transposed = model.update_col_factors(sub.T, transpose_input=True)
    a, b, la, lb = dask.compute(plain.new_values, transposed.new_values,
                                plain.unregularized_loss, transposed.unregularized_loss)
    A, mask = dense_and_mask(X)
    W = oracle.weights_matrix(mask, W0, R, C)
    want = oracle.solve_rows(A.T[cols], W.T[cols], U0, LAM)
    np.testing.assert_allclose(a, want, rtol=1e-9)  # first appearance: 3, 17, 9
    np.testing.assert_allclose(b, want, rtol=1e-9)
    assert la == pytest.approx(lb, rel=1e-12)
    assert la == pytest.approx(dense_terms(A.T, mask.T, W.T, cols, want, U0, M)[0], rel=1e-9)


def test_projection_of_new_rows_with_weights(problem):
    X, R, C = problem
    model = oracle_model(R, C)
    _, V0 = current(model)
    A, mask = dense_and_mask(X)
    # two brand-new rows, given ids beyond input_rows: row ids only group the entries
    rows = [100, 57]
    sub = batch(X, [4, 9])
    sp = scipy.sparse.coo_matrix((sub.data, (np.where(sub.row == 4, 100, 57), sub.col)),
                                 shape=(101, M))
    weights = [0.3, 2.0]
    got = model.project_row_factors(sp, projection_weights=weights).compute()
    W = oracle.weights_matrix(mask[[4, 9]], W0, weights, C)
    np.testing.assert_allclose(got, oracle.solve_rows(A[[4, 9]], W, V0, LAM), rtol=1e-9)
    assert got.shape == (len(rows), K)
    # the same rows as a lazy input, with per-row weights checked at compute time
    lazy = dask_sparse(batch(X, [4, 9]), (7, 8))
    got = model.project_row_factors(lazy, projection_weights=weights).compute()
    np.testing.assert_allclose(got, oracle.solve_rows(A[[4, 9]], W, V0, LAM), rtol=1e-9)
    with pytest.raises(ValueError, match="projection_weights has 3 values"):
        model.project_row_factors(lazy, projection_weights=[1.0, 2.0, 3.0]).compute()


def test_cache_settings_never_change_the_numbers(problem):
    X, R, C = problem
    results = []
    for factors_cache, gramian_cache in CACHES:
        model = oracle_model(R, C, use_factors_weights_cache=factors_cache,
                             use_gramian_cache=gramian_cache)
        prepare(model, "row")
        row = model.update_row_factors(batch(X, ROWS))
        first = dask.compute(row.new_values, row.unregularized_loss, row.regularization,
                             row.sum_weights)
        run(row.update_op)
        prepare(model, "col")
        col = model.update_col_factors(Ratings.from_scipy(X, chunks=(8, 5)))
        second = dask.compute(col.new_values, col.unregularized_loss, col.sum_weights)
        run(col.update_op)
        proj = model.project_row_factors(batch(X, [2, 1]), projection_weights=0.7).compute()
        results.append([*first, *second, proj, *current(model)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_full_sweeps_through_walsmodel_match_dense_wals(problem):
    X, R, C = problem
    model = oracle_model(R, C, use_gramian_cache=False, split_every=2)  # deep trees
    U0, V0 = current(model)
    ratings = Ratings.from_scipy(X, chunks=(7, 6))
    rows, cols = model.update_row_factors(ratings), model.update_col_factors(ratings)
    for _ in range(2):
        prepare(model, "row")
        run(rows.update_op)
        prepare(model, "col")
        run(cols.update_op)
    A, mask = dense_and_mask(X)
    U, V, _ = oracle.dense_wals(A, mask, U0, V0, w0=W0, lam=LAM, row_weights=R, col_weights=C,
                                n_iter=2)
    got_u, got_v = current(model)
    np.testing.assert_allclose(got_u, U, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got_v, V, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------- laziness and stores
def test_building_and_loss_terms_write_nothing(problem, tmp_path):
    X, R, C = problem
    model = WALSModel(N, M, K, row_weights=R, col_weights=C, store=tmp_path / "m.zarr", seed=0)
    run(model.initialize_op)
    meta = model.store.meta
    keys = sorted(model.store.group["row_factors"].array_keys())
    res = model.update_row_factors(batch(X, ROWS))
    _ = model.row_update_prep_gramian_op, model.initialize_row_update_op
    dask.compute(res.new_values, res.unregularized_loss, res.regularization, res.sum_weights)
    assert model.store.meta == meta
    assert sorted(model.store.group["row_factors"].array_keys()) == keys
    run(res.update_op)
    assert model.store.meta["current"]["row_factors"] != meta["current"]["row_factors"]
    assert model.store.meta["current"]["col_factors"] == meta["current"]["col_factors"]
    assert len(list(model.store.group["row_factors"].array_keys())) == 1  # old one removed


def test_ops_run_from_another_model_on_the_same_store(tmp_path):
    path = tmp_path / "tf.zarr"
    chief = tf_model(store=path)
    run(chief.initialize_op)
    worker = tf_model(store=str(path))  # opens the model: writes nothing, keeps the values
    np.testing.assert_allclose(fx.flat(values(worker.col_factors)), fx.flat(fx.COL_INIT),
                               rtol=1e-6)
    run(worker.worker_init)
    prepare(worker, "row")
    full = tf_slice(range(5))
    run(worker.update_row_factors(full).update_op)
    for shard, want in zip(values(chief.row_factors), fx.ROW_FACTORS):
        np.testing.assert_allclose(shard, want, atol=1e-3)
    with pytest.raises(ValueError, match=r"holds a \(5, 7\) model of rank 3"):
        WALSModel(5, 8, 3, store=path)
    with pytest.raises(ValueError, match="float32 factors"):
        WALSModel(5, 7, 3, store=path, dtype="float64")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="is not a daskwals model store"):
        WALSModel(5, 7, 3, store=tmp_path / "other")


def test_tf_scenario_on_a_process_cluster(client, tmp_path):
    model = tf_model(store=tmp_path / "dist.zarr")
    run(model.initialize_op, model.worker_init)
    prepare(model, "row")
    for rows in ([0, 2], [1, 4], [3]):
        run(model.update_row_factors(tf_slice(rows)).update_op)
    prepare(model, "col")
    run(model.update_col_factors(tf_slice(range(5))).update_op)
    for shard, want in zip(values(model.row_factors), fx.ROW_FACTORS):
        np.testing.assert_allclose(shard, want, atol=1e-3)
    for shard, want in zip(values(model.col_factors), fx.COL_FACTORS):
        np.testing.assert_allclose(shard, want, atol=1e-3)
    proj = model.project_col_factors(tf_slice(cols=[5, 3, 1])).compute()
    np.testing.assert_allclose(proj, fx.PROJECTED_COLS_5_3_1, atol=1e-3)


def test_writes_are_refused_while_another_writer_holds_the_store(tmp_path):
    from daskwals.store import StoreLockedError

    model = tf_model(store=tmp_path / "locked.zarr")
    run(model.initialize_op)
    update = model.update_row_factors(tf_slice([0, 3]))
    with model.store.writer():
        with pytest.raises(StoreLockedError):
            run(update.update_op)
        new = update.new_values.compute()  # reading is always allowed
    run(update.update_op)
    np.testing.assert_allclose(fx.flat(values(model.row_factors))[[0, 3]], new)


# the op that loses may leave chunks of its discarded version, which zarr then reports
@pytest.mark.filterwarnings("ignore:Object at .* is not recognized")
def test_two_updates_of_one_axis_in_one_compute_are_refused(problem):
    X, R, C = problem
    model = oracle_model(R, C)
    U0, _ = current(model)
    a = model.update_row_factors(batch(X, [0, 2]))
    b = model.update_row_factors(batch(X, [1, 4]))
    with pytest.raises(RuntimeError, match="one after the other"):
        dask.compute(a.update_op, b.update_op)
    U1, _ = current(model)
    changed = {i for i in range(N) if not np.array_equal(U0[i], U1[i])}
    assert changed in ({0, 2}, {1, 4})  # exactly one of them, whole
    run(model.update_row_factors(batch(X, [5])).update_op)  # the model still works


def test_estimator_store_serves_projections(problem):
    from daskwals import WALS

    X, R, C = problem
    est = WALS(K, unobserved_weight=W0, regularization=LAM, row_weights=R, col_weights=C,
               n_iter=2, dtype="float64", seed=0, chunks=(7, 6)).fit(X)
    model = WALSModel(N, M, K, unobserved_weight=W0, regularization=LAM, row_weights=R,
                      col_weights=C, store=est.store_)
    got = model.project_row_factors(batch(X, [6, 3]), projection_weights=[R[6], R[3]]).compute()
    A, mask = dense_and_mask(X)
    W = oracle.weights_matrix(mask, W0, R, C)
    V = np.asarray(est.col_factors_)
    np.testing.assert_allclose(got, oracle.solve_rows(A[[6, 3]], W[[6, 3]], V, LAM), rtol=1e-9)


# ----------------------------------------------------------- sharding and scatter_update
def test_shards_follow_tfs_div_layout():
    assert WALSModel.shard_sizes(7, 3) == [3, 2, 2]
    assert WALSModel.shard_sizes(5, 2) == [3, 2]
    for size in range(1, 13):
        for shards in range(1, 6):
            func = WALSModel.sharding_func(size, shards)
            bounds = np.cumsum([0, *WALSModel.shard_sizes(size, shards)])
            ids = np.arange(size)
            shard, local = func(ids)
            if shards == 1:
                assert shard is None
                np.testing.assert_array_equal(local, ids)
                continue
            want = np.searchsorted(bounds, ids, side="right") - 1
            np.testing.assert_array_equal(shard, want)
            np.testing.assert_array_equal(local, ids - bounds[want])


def test_scatter_update():
    shards = [np.zeros((3, 2)), np.zeros((2, 2))]
    func = WALSModel.sharding_func(5, 2)
    vals = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    out = WALSModel.scatter_update(shards, [4, 0, 2], vals, func)
    np.testing.assert_array_equal(np.concatenate(out), [[2, 2], [0, 0], [3, 3], [0, 0], [1, 1]])
    assert out[0] is shards[0]  # NumPy shards in place
    lazy = [da.zeros((3, 2), chunks=2), da.zeros((2, 2))]
    out = WALSModel.scatter_update(lazy, [3], [[5.0, 6.0]], func)
    assert isinstance(out[1], da.Array)
    np.testing.assert_array_equal(out[1].compute(), [[5, 6], [0, 0]])
    np.testing.assert_array_equal(lazy[1].compute(), 0)
    one = WALSModel.scatter_update([np.zeros((4, 1))], [1], [[7.0]], None)
    np.testing.assert_array_equal(one[0].ravel(), [0, 7, 0, 0])


# ----------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(row_weights=None), "both be None"),
        (dict(row_weights=[[1.0, 1.0], [1.0, 1.0]], num_row_shards=2),
         r"shard lengths are \[2, 2\], but the shards hold \[3, 2\]"),
        (dict(row_weights=[1.0, -1.0, 1.0, 1.0, 1.0]), "row_weights must be finite and ≥ 0"),
        (dict(col_weights=[1.0, 2.0]), "sequence of 7 values"),
        (dict(row_init=np.ones((4, 3))), r"row_init must have shape \(5, 3\)"),
        (dict(col_init=[np.ones((3, 3)), np.ones((4, 3))], num_col_shards=2),
         r"col_init as a list of shards needs shapes \[\(4, 3\), \(3, 3\)\]"),
        (dict(row_init="zeros"), "row_init must be 'random'"),
        (dict(unobserved_weight=-1), "unobserved_weight must be a finite number ≥ 0"),
        (dict(num_row_shards=0), "num_row_shards must be an integer ≥ 1"),
        (dict(dtype="int8"), "dtype must be 'float32' or 'float64'"),
        (dict(use_gramian_cache="yes"), "use_gramian_cache must be True or False"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WALSModel(5, 7, 3, **kwargs)


def test_input_errors():
    model = WALSModel(5, 7, 3, seed=0)
    run(model.initialize_op)
    bad_row = scipy.sparse.coo_matrix(([1.0], ([5], [0])), shape=(6, 7))
    with pytest.raises(ValueError, match=r"row index is outside \[0, 5\) \(input_rows=5\)"):
        model.update_row_factors(bad_row)
    bad_col = scipy.sparse.coo_matrix(([1.0], ([7], [0])), shape=(8, 5))  # a slice of Aᵀ
    with pytest.raises(ValueError, match=r"column index is outside \[0, 7\)"):
        model.update_row_factors(bad_col, transpose_input=True)
    dup = scipy.sparse.coo_matrix(([1.0, 2.0], ([1, 1], [2, 2])), shape=(5, 7))
    with pytest.raises(ValueError, match="duplicate"):
        model.update_row_factors(dup)
    nan = scipy.sparse.coo_matrix(([np.nan], ([1], [2])), shape=(5, 7))
    with pytest.raises(ValueError, match="non-finite"):
        model.update_col_factors(nan)
    with pytest.raises(ValueError, match="7 rows × 5 columns once oriented"):
        model.update_row_factors(Ratings.from_scipy(scipy.sparse.eye(7, 5, format="csr")))
    with pytest.raises(TypeError, match="dense arrays are refused"):
        model.update_row_factors(np.ones((5, 7)))
    with pytest.raises(ValueError, match="no stored entries"):
        model.project_row_factors(scipy.sparse.coo_matrix((5, 7)))
    with pytest.raises(ValueError, match="projection_weights has 1 values but sp_input has 2"):
        model.project_row_factors(tf_slice([0, 1]), projection_weights=[1.0])
    uninitialised = WALSModel(5, 7, 3)
    with pytest.raises(RuntimeError, match="initialize_op first"):
        uninitialised.update_row_factors(tf_slice([0])).new_values.compute()


def test_singular_system_names_the_fix():
    model = WALSModel(5, 7, 3, unobserved_weight=0.0, row_weights=None, col_weights=None, seed=0)
    run(model.initialize_op)
    with pytest.raises(SingularSystemError, match="regularization"):
        model.update_row_factors(tf_slice([0])).new_values.compute()
