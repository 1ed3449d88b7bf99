"""Tests of daskwals.metrics: known answers, dense NumPy oracles, chunking independence."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse

import daskwals
from daskwals import Ratings, metrics, splits

LOG3 = np.log2(3.0)


# ------------------------------------------------------------------ dense oracles
def _oracle_errors(U, V, matrix):
    coo = matrix.tocoo()
    err = coo.data - (U @ V.T)[coo.row, coo.col]
    return np.sqrt(np.mean(err**2)), np.mean(np.abs(err))


def _oracle_ranking(rec, relevant_dense, k):
    """Per-metric means by direct loops over users (binary relevance)."""
    out = {"precision": [], "recall": [], "map": [], "ndcg": []}
    for u in range(rec.shape[0]):
        rel = set(np.flatnonzero(relevant_dense[u]))
        if not rel:
            continue
        hits = [1.0 if i in rel else 0.0 for i in rec[u, :k]]
        out["precision"].append(sum(hits) / k)
        out["recall"].append(sum(hits) / len(rel))
        ap = sum(sum(hits[: p + 1]) / (p + 1) for p in range(k) if hits[p])
        out["map"].append(ap / min(k, len(rel)))
        dcg = sum(h / np.log2(p + 2) for p, h in enumerate(hits))
        idcg = sum(1 / np.log2(p + 2) for p in range(min(k, len(rel))))
        out["ndcg"].append(dcg / idcg)
    return {name: np.mean(v) for name, v in out.items()}


def _pattern(matrix):
    """Dense bool of the stored entries (stored zeros included)."""
    ones = scipy.sparse.csr_matrix(matrix, copy=True)
    ones.data[:] = 1.0
    return ones.toarray() != 0


def _oracle_auc(U, V, train, test, users):
    scores = U @ V.T
    seen, held = _pattern(train), _pattern(test)
    values = []
    for u in users:
        pos, neg = np.flatnonzero(held[u]), np.flatnonzero(~seen[u] & ~held[u])
        if pos.size and neg.size:
            d = scores[u, pos][:, None] - scores[u, neg][None, :]
            values.append(np.mean((d > 0) + 0.5 * (d == 0)))
    return np.mean(values)


@pytest.fixture(scope="module")
def problem():
    """Random factors and disjoint train / test interactions, 50 × 37, k = 3."""
    rng = np.random.default_rng(0)
    n, m, k = 50, 37, 3
    U, V = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    train = scipy.sparse.random(n, m, density=0.2, random_state=1, format="csr")
    test = scipy.sparse.random(n, m, density=0.1, random_state=2, format="csr")
    test = (test - test.multiply(train != 0)).tocsr()
    test.eliminate_zeros()
    test.data = np.round(test.data * 5)  # some stored ratings become stored zeros
    assert np.any(test.data == 0)
    return U, V, train, test


# ---------------------------------------------------------------- rmse and mae
def test_rmse_and_mae_known_answer():
    U = np.array([[1.0, 0.0], [0.0, 1.0]])
    V = np.array([[1.0, 1.0], [2.0, 0.0]])  # predictions [[1, 2], [1, 0]]
    # errors: (0,0) 2-1 = 1, (0,1) stored zero 0-2 = -2, (1,0) 1-1 = 0, (1,1) 3-0 = 3
    test = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [2.0, 0.0, 1.0, 3.0], (2, 2), chunks=1)
    assert metrics.rmse((U, V), test) == pytest.approx(np.sqrt(14 / 4))
    assert metrics.mae((U, V), test) == pytest.approx(6 / 4)


@pytest.mark.parametrize("chunks", [7, (11, 5), (50, 37)])
def test_rmse_and_mae_match_dense_oracle_for_any_test_chunking(problem, chunks):
    U, V, _, test = problem
    expected_rmse, expected_mae = _oracle_errors(U, V, test)
    ratings = Ratings.from_scipy(test, chunks=chunks)
    # factors chunked unlike the test blocks, one of them dask, one NumPy
    factors = (da.from_array(U, chunks=(13, 3)), V)
    assert metrics.rmse(factors, ratings, split_every=2) == pytest.approx(expected_rmse)
    assert metrics.mae(factors, ratings) == pytest.approx(expected_mae)


def test_rmse_accepts_scipy_and_rejects_bad_inputs(problem):
    U, V, _, test = problem
    assert metrics.rmse((U, V), test) == pytest.approx(_oracle_errors(U, V, test)[0])
    with pytest.raises(ValueError, match="test has shape"):
        metrics.rmse((U[:-1], V), test)
    with pytest.raises(ValueError, match="same k"):
        metrics.rmse((U, V[:, :2]), test)
    with pytest.raises(ValueError, match="no stored entries"):
        metrics.rmse((U, V), scipy.sparse.csr_matrix(test.shape))
    with pytest.raises(ValueError, match="not fitted"):
        metrics.rmse(daskwals.WALS(2), test)
    with pytest.raises(TypeError, match="pair"):
        metrics.rmse(U, test)


# ------------------------------------------------------------ ranking at K
# users: 0 -> {1, 5}; 1 -> {3}; 2 -> {} (left out of the means); 3 -> {0, 2, 4, 5}
REC = np.array([[0, 1, 2], [3, -1, -1], [4, 0, 5], [5, 7, 0]])
RELEVANT = scipy.sparse.csr_matrix(
    (np.ones(7), ([0, 0, 1, 3, 3, 3, 3], [1, 5, 3, 0, 2, 4, 5])), shape=(4, 8)
)
NDCG_0 = (1 / LOG3) / (1 + 1 / LOG3)
NDCG_3 = 1.5 / (1 + 1 / LOG3 + 0.5)
KNOWN = {
    "precision": (1 / 3 + 1 / 3 + 2 / 3) / 3,
    "recall": (1 / 2 + 1 + 2 / 4) / 3,
    "map": ((1 / 2) / 2 + 1 + (1 + 2 / 3) / 3) / 3,
    "ndcg": (NDCG_0 + 1 + NDCG_3) / 3,
}
FUNCTIONS = {
    "precision": metrics.precision_at_k, "recall": metrics.recall_at_k,
    "map": metrics.map_at_k, "ndcg": metrics.ndcg_at_k,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_ranking_metrics_known_answers(name):
    assert FUNCTIONS[name](REC, RELEVANT) == pytest.approx(KNOWN[name])


def test_ranking_metrics_at_a_smaller_k():
    # k=1: user 0 misses, users 1 and 3 hit with their first item
    assert metrics.precision_at_k(REC, RELEVANT, k=1) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(REC, RELEVANT, k=1) == pytest.approx((0 + 1 + 1 / 4) / 3)
    assert metrics.map_at_k(REC, RELEVANT, k=1) == pytest.approx(2 / 3)
    assert metrics.ndcg_at_k(REC, RELEVANT, k=1) == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 4, 10])
def test_ranking_metrics_match_dense_oracle(k):
    rng = np.random.default_rng(3)
    n, m, K = 60, 30, 10
    rec = np.stack([rng.permutation(m)[:K] for _ in range(n)])
    rec[rng.random((n, K)) < 0.1] = -1  # some empty slots
    relevant = scipy.sparse.random(n, m, density=0.15, random_state=4, format="csr")
    expected = _oracle_ranking(rec, relevant.toarray() != 0, k)
    as_ratings = Ratings.from_scipy(relevant, chunks=(7, 9))
    for name, function in FUNCTIONS.items():
        assert function(rec, relevant, k) == pytest.approx(expected[name])
        assert function(rec, as_ratings, k) == pytest.approx(expected[name])


def test_ranking_metrics_with_users_select_rows_of_relevant():
    users = np.array([3, 0])
    rows = Ratings.from_scipy(RELEVANT, chunks=(3, 5))
    expected = (2 / 3 + 1 / 3) / 2
    assert metrics.precision_at_k(REC[[3, 0]], rows, users=users) == pytest.approx(expected)


@pytest.mark.parametrize(
    "rec, kwargs, match",
    [
        (REC[:, 0], {}, "2-d integer array"),
        (REC, {"k": 4}, r"k must be an integer in \[1, 3\]"),
        (REC[:2], {}, "users="),
        (np.array([[9, 0, 1]] * 4), {}, r"\[0, 8\)"),
        (np.array([[1, 1, 2]] * 4), {}, "repeats"),
        (np.full((4, 3), -1), {"users": [2, 2, 2, 2]}, "no user has a relevant item"),
    ],
)
def test_ranking_metrics_reject_bad_inputs(rec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.precision_at_k(rec, RELEVANT, **kwargs)


# ------------------------------------------------------------------------- AUC
def test_auc_known_answer():
    U = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    V = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    # user 0 scores [3, 2, 1, 2, 0]: train {0}, test {1}; the positive (2) beats 1 and 0
    #   and ties 2: AUC 2.5 / 3.  User 1 scores [-3, -2, -1, -2, 0]: test {2, 4} beat
    #   every negative: AUC 1.  User 2 has no test item and is left out.
    train = scipy.sparse.csr_matrix(([1.0], ([0], [0])), shape=(3, 5))
    test = scipy.sparse.csr_matrix(([1.0, 1.0, 1.0], ([0, 1, 1], [1, 2, 4])), shape=(3, 5))
    assert metrics.auc((U, V), train, test) == pytest.approx((5 / 6 + 1) / 2)
    assert metrics.auc((U, V), train, test, item_block=2, batch_size=1) == pytest.approx(
        (5 / 6 + 1) / 2
    )


@pytest.mark.parametrize("batch_size, item_block", [(1024, None), (7, 5), (1, 37)])
def test_auc_matches_dense_oracle(problem, batch_size, item_block):
    U, V, train, test = problem
    users = np.flatnonzero(np.diff(test.indptr))
    expected = _oracle_auc(U, V, train, test, users)
    got = metrics.auc((U, V), train, test, batch_size=batch_size, item_block=item_block)
    assert got == pytest.approx(expected)


def test_auc_on_chunked_ratings_and_dask_factors(problem):
    U, V, train, test = problem
    users = [0, 3, 4, 17, 49]
    expected = _oracle_auc(U, V, train, test, users)
    got = metrics.auc(
        (da.from_array(U, chunks=(8, 3)), da.from_array(V, chunks=(6, 3))),
        Ratings.from_scipy(train, chunks=(9, 11)), Ratings.from_scipy(test, chunks=(4, 20)),
        users=users, batch_size=2, split_every=2,
    )
    assert got == pytest.approx(expected)


def test_auc_rejects_bad_inputs(problem):
    U, V, train, test = problem
    with pytest.raises(ValueError, match="train is required"):
        metrics.auc((U, V), None, test)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.auc((U, V), train, test, batch_size=0)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 50\)"):
        metrics.auc((U, V), train, test, users=[50])


# ---------------------------------------------------------- with a fitted model
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from daskwals.synthetic import planted_implicit

    data = planted_implicit(80, 45, rank=3, mean_per_user=8, seed=0)
    ratings = Ratings.from_scipy(data.matrix, chunks=(16, 12))
    train, test = splits.leave_k_out(ratings, k=2, seed=1, min_interactions=3)
    model = daskwals.WALS(4, n_iter=3, seed=0, regularization=0.1,
                          store=tmp_path_factory.mktemp("model") / "m.zarr").fit(train)
    return model, train, test


def test_metrics_of_a_fitted_model_match_its_factors(fitted):
    model, train, test = fitted
    U = np.asarray(model.row_factors_.compute(), dtype=np.float64)
    V = np.asarray(model.col_factors_.compute(), dtype=np.float64)
    test_csr = scipy.sparse.csr_matrix(test.rows.compute().to_scipy_sparse())
    train_csr = scipy.sparse.csr_matrix(train.rows.compute().to_scipy_sparse())
    # a test chunked unlike the model's factors
    rechunked = Ratings.from_scipy(test_csr, chunks=(30, 7))
    assert metrics.rmse(model, rechunked) == pytest.approx(_oracle_errors(U, V, test_csr)[0])
    assert metrics.mae(model, test) == pytest.approx(_oracle_errors(U, V, test_csr)[1])
    users = np.flatnonzero(np.diff(test_csr.indptr))
    assert metrics.auc(model, None, test) == pytest.approx(
        _oracle_auc(U, V, train_csr, test_csr, users)
    )


def test_ranking_report_matches_the_metrics_on_recommendations(fitted):
    model, train, test = fitted
    K = 5
    report = metrics.ranking_report(model, train, test, K=K, batch_size=17)
    test_csr = scipy.sparse.csr_matrix(test.rows.compute().to_scipy_sparse())
    users = np.flatnonzero(np.diff(test_csr.indptr))
    ids, _ = model.recommend(users, N=K)
    # dense oracle of the recommendations: top K scores among items not in train
    scores = np.asarray(model.row_factors_.compute(), np.float64) @ np.asarray(
        model.col_factors_.compute(), np.float64
    ).T
    scores[train.rows.compute().todense() != 0] = -np.inf
    top = np.argsort(-scores[users], axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(top, axis=1))
    expected = _oracle_ranking(ids, test_csr[users].toarray() != 0, K)
    assert report["k"] == K and report["n_users"] == users.size
    for name in ("precision", "recall", "map", "ndcg"):
        assert report[name] == pytest.approx(expected[name])
    assert report["auc"] == pytest.approx(metrics.auc(model, train, test))
    assert 0.5 < report["auc"] <= 1.0  # a planted structure is learnt better than chance


def test_ranking_report_validates_its_arguments(fitted):
    model, train, test = fitted
    with pytest.raises(ValueError, match="K must be an integer ≥ 1"):
        metrics.ranking_report(model, train, test, K=0)
    with pytest.raises(TypeError, match="fitted daskwals.WALS"):
        metrics.ranking_report((np.ones((2, 2)), np.ones((2, 2))), train, test)
