"""Recommendations, similar items and users, fold-in, refresh, scoring and serving."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import scipy.sparse

import daskwals
from daskwals import WALS, Ratings

from . import oracle
from .conftest import dense_and_mask, random_ratings


@pytest.fixture(scope="module")
def fitted():
    X = random_ratings(50, 40, 0.2, seed=8, empty_rows=(4,))
    model = WALS(4, n_iter=3, seed=0, dtype="float64", regularization=0.1,
                 chunks=(12, 9)).fit(X)
    return model, X


def brute_force(U, V, rows, n, exclude=None, allowed=None):
    out = []
    for r in rows:
        s = U[r] @ V.T
        if exclude is not None:
            s[exclude[r].indices] = -np.inf
        if allowed is not None:
            s[~allowed] = -np.inf
        out.append(np.sort(s)[::-1][:n])
    return np.array(out)


def test_recommend_filters(fitted):
    model, X = fitted
    U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    rows = np.array([0, 4, 49, 0, 17])
    ids, scores = model.recommend(rows, N=5, batch_size=2)
    np.testing.assert_allclose(scores, brute_force(U, V, rows, 5, exclude=X), rtol=1e-12)
    for r, row_ids in zip(rows, ids):
        assert not set(row_ids) & set(X[r].indices)
        np.testing.assert_allclose(U[r] @ V[row_ids].T, scores[rows.tolist().index(r)])
    allowed = np.zeros(40, bool)
    allowed[[1, 2, 3, 30, 31]] = True
    ids, scores = model.recommend(rows, N=3, filter_already_liked=False, items=[1, 2, 3, 30, 31],
                                  filter_items=[31])
    allowed[31] = False
    np.testing.assert_allclose(scores, brute_force(U, V, rows, 3, allowed=allowed), rtol=1e-12)
    assert set(ids.ravel()) <= {1, 2, 3, 30}
    ids, _ = model.recommend([0], N=50, filter_already_liked=False, items=[5, 6])
    assert sorted(ids[0][:2]) == [5, 6] and np.all(ids[0][2:] == -1)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 50\)"):
        model.recommend([50])


def test_recommend_all_is_lazy_and_matches(fitted):
    model, X = fitted
    calls = []
    with dask.callbacks.Callback(pretask=lambda *a: calls.append(1)):
        ids, scores = model.recommend_all(N=4)
    assert calls == [] and ids.shape == (50, 4)
    ids, scores = dask.compute(ids, scores)
    U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    np.testing.assert_allclose(scores, brute_force(U, V, range(50), 4, exclude=X), rtol=1e-12)
    top, _ = model.recommend(np.arange(50), N=4)
    np.testing.assert_array_equal(ids, top)


def test_similar_items_and_users_cosine(fitted):
    model, _ = fitted
    V = np.asarray(model.col_factors_)
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    ids, scores = model.similar_items([3, 7], N=5)
    for q, row_ids, row_scores in zip([3, 7], ids, scores):
        sims = Vn @ Vn[q]
        sims[q] = -np.inf
        np.testing.assert_allclose(row_scores, np.sort(sims)[::-1][:5], rtol=1e-12)
        assert q not in row_ids
        assert np.all(row_scores <= 1 + 1e-12)
    uids, _ = model.similar_users([0], N=3)
    assert 0 not in uids[0] and uids.shape == (1, 3)


def test_transform_is_the_exact_fold_in(fitted):
    model, X = fitted
    new = random_ratings(6, 40, 0.3, seed=21, empty_rows=(2,))
    folded = model.transform(new)
    assert folded.shape == (6, 4)
    A, mask = dense_and_mask(new)
    V = np.asarray(model.col_factors_)
    W = oracle.weights_matrix(mask, 0.1, 1.0, 1.0)
    expected = oracle.solve_rows(A, W, V, 0.1)
    np.testing.assert_allclose(np.asarray(folded), expected, rtol=1e-9, atol=1e-12)
    # folding in a fitted row with its own history reproduces the row sweep's answer
    # given the V it was solved against, so transform(X) for all rows ≈ one more row sweep
    with pytest.raises(ValueError, match="one column per item"):
        model.transform(scipy.sparse.csr_matrix((2, 39)))


def test_partial_fit_refreshes_rows_and_keeps_the_rest(tmp_path):
    X = random_ratings(30, 20, 0.3, seed=2)
    model = WALS(3, n_iter=2, seed=0, dtype="float64", regularization=0.1, chunks=(8, 6),
                 store=tmp_path / "m.zarr").fit(X)
    before = np.asarray(model.row_factors_).copy()
    history = random_ratings(2, 20, 0.5, seed=9)
    expected = np.asarray(model.transform(history))
    model.partial_fit(history, rows=[5, 17])
    after = np.asarray(model.row_factors_)
    np.testing.assert_allclose(after[[5, 17]], expected, rtol=1e-12)
    keep = np.setdiff1d(np.arange(30), [5, 17])
    np.testing.assert_array_equal(after[keep], before[keep])
    np.testing.assert_allclose(model.store_.gramian("row"), after.T @ after, rtol=1e-10)
    assert daskwals.FactorStore.open(tmp_path / "m.zarr").meta["sweeps"] == 4


def test_score_is_negative_rmse(fitted):
    model, X = fitted
    U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    coo = X.tocoo()
    rmse = np.sqrt(np.mean((coo.data - np.sum(U[coo.row] * V[coo.col], axis=1)) ** 2))
    assert model.score(X) == pytest.approx(-rmse, rel=1e-10)


def test_open_serves_with_original_ids(tmp_path):
    users = np.array([f"u{i:03d}" for i in range(30)], dtype=object)[::-1].copy()
    items = np.arange(100, 120)
    X = random_ratings(30, 20, 0.3, seed=5)
    coo = X.tocoo()
    ratings = Ratings.from_coo(coo.row, coo.col, coo.data, X.shape, chunks=(8, 6),
                               row_ids=users, col_ids=items)
    model = WALS(3, n_iter=2, seed=0, store=tmp_path / "m.zarr").fit(ratings)
    ids, scores = model.recommend(["u029", "u000"], N=3)
    assert ids.shape == (2, 3) and set(ids.ravel()) <= set(items.tolist())
    by_index, _ = WALS.recommend(model, ["u029"], N=3)
    np.testing.assert_array_equal(by_index[0], ids[0])
    liked = items[X[users.tolist().index("u029")].indices]
    assert not set(ids[0]) & set(liked)
    with pytest.raises(KeyError, match="'nobody'"):
        model.recommend(["nobody"])
    served = daskwals.open(tmp_path / "m.zarr")
    np.testing.assert_array_equal(np.asarray(served.col_factors_), np.asarray(model.col_factors_))
    assert served.loss_history_ == model.loss_history_ and served.n_iter_ == 2
    ids2, scores2 = served.recommend(["u029", "u000"], N=3, filter_already_liked=False)
    ids3, scores3 = model.recommend(["u029", "u000"], N=3, filter_already_liked=False)
    np.testing.assert_array_equal(ids2, ids3)
    np.testing.assert_allclose(scores2, scores3)
    sim, _ = served.similar_items([105], N=2)
    assert 105 not in sim[0] and set(sim[0]) <= set(items.tolist())
    with pytest.raises(ValueError, match="filter_already_liked"):
        served.recommend(["u000"])


def test_ranking_report_works_on_positions_for_models_with_ids():
    from daskwals.metrics import ranking_report

    X = random_ratings(40, 25, 0.3, seed=12)
    test = random_ratings(40, 25, 0.05, seed=13)
    test = test - test.multiply(X != 0)  # disjoint from the training entries
    test.eliminate_zeros()
    coo = X.tocoo()
    with_ids = Ratings.from_coo(coo.row, coo.col, coo.data, X.shape, chunks=(10, 10),
                                row_ids=np.arange(40)[::-1] + 1000,
                                col_ids=np.array([f"i{j}" for j in range(25)], dtype=object))
    a = WALS(3, n_iter=2, seed=0, chunks=(10, 10)).fit(with_ids)
    b = WALS(3, n_iter=2, seed=0, chunks=(10, 10)).fit(X)
    ra, rb = ranking_report(a, X, test, K=5), ranking_report(b, X, test, K=5)
    assert ra == pytest.approx(rb)
    assert ra["n_users"] > 0


def test_xarray_reads_the_factors_with_dimension_names(tmp_path):
    xr = pytest.importorskip("xarray")
    X = random_ratings(30, 20, 0.3, seed=4)
    model = WALS(3, n_iter=1, seed=0, store=tmp_path / "m.zarr").fit(X)
    for axis, factor in (("row", model.row_factors_), ("col", model.col_factors_)):
        group, name = model.store_.meta["current"][f"{axis}_factors"].split("/")
        ds = xr.open_zarr(tmp_path / "m.zarr", group=group, consolidated=False)
        assert ds[name].dims == (axis, "component")
        np.testing.assert_array_equal(ds[name].values, np.asarray(factor))
