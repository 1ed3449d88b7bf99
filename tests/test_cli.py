"""The command line, run as users run it: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from daskwals.synthetic import leave_one_out, planted_implicit


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "daskwals.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "info" in out.stdout


def test_demo_end_to_end(tmp_path):
    store = tmp_path / "demo.zarr"
    out = run("demo", "--users", "800", "--items", "300", "--iterations", "3", "--rank", "8",
              "--workers", "1", "--eval-users", "200", "--store", str(store))
    assert out.returncode == 0, out.stderr
    assert "iteration   3: loss" in out.stdout
    assert "held-out hit rate @10" in out.stdout and "popularity" in out.stdout
    assert f"model store: {store}" in out.stdout
    assert "dashboard:" in out.stdout
    info = run("info", str(store))
    assert info.returncode == 0, info.stderr
    assert "800 rows × 300 columns, rank 8" in info.stdout
    assert "sweeps:       6 (3 iterations)" in info.stdout


def test_info_on_missing_store_is_a_clear_error(tmp_path):
    out = run("info", str(tmp_path / "nope.zarr"))
    assert out.returncode == 1
    assert "no daskwals model store" in out.stderr


def test_planted_generator_and_split():
    data = planted_implicit(300, 100, rank=4, mean_per_user=10, seed=3)
    again = planted_implicit(300, 100, rank=4, mean_per_user=10, seed=3)
    assert (data.matrix != again.matrix).nnz == 0
    assert data.matrix.shape == (300, 100) and data.matrix.nnz > 1000
    train, rows, cols = leave_one_out(data.matrix, seed=0)
    assert train.nnz == data.matrix.nnz - rows.size
    assert all(data.matrix[r, c] == 1 and train[r, c] == 0 for r, c in zip(rows, cols))
    with pytest.raises(IndexError):
        data.matrix[300, 0]


# ------------------------------------------------------- recommend, evaluate, split
# One small explicit-ratings data set with string user ids and sparse integer item ids,
# run through the commands as a user would: ingest → split → fit → recommend / evaluate.

def _csv(path, seed=0, n=60, m=40, density=0.35):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    mask = rng.random((n, m)) < density
    mask[np.arange(n), rng.integers(0, m, n)] = True  # nobody is empty
    mask[rng.integers(0, n, m), np.arange(m)] = True
    r, c = np.nonzero(mask)
    rating = np.clip(np.round(3 + (p[r] * q[c]).sum(1)), 1, 5)
    pd.DataFrame({"uid": [f"u{i:02d}" for i in r], "movie": 1000 + 7 * c,
                  "stars": rating}).to_csv(path, index=False)
    return int(r.size)


def _ok(*args):
    out = run(*args)
    assert out.returncode == 0, out.stderr
    return out


def _csr(ratings):
    """A daskwals.Ratings as a scipy CSR (small test data only)."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(ratings.rows.compute().tocsr())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Paths of a ratings store, its random 80/20 split and a model fitted on train."""
    d = tmp_path_factory.mktemp("cli")
    paths = {k: str(d / f"{k}.zarr") for k in ("ratings", "train", "test", "model")}
    nnz = _csv(d / "ratings.csv")
    _ok("ingest", str(d / "ratings.csv"), paths["ratings"], "--user", "uid", "--item", "movie",
        "--rating", "stars", "--chunks", "16", "16", "--threads")
    _ok("split", paths["ratings"], paths["train"], paths["test"], "--method", "random",
        "--fraction", "0.2", "--seed", "3")
    _ok("fit", paths["train"], paths["model"], "--rank", "3", "--iterations", "4",
        "--regularization", "1", "--unobserved-weight", "0.01", "--threads")
    paths["dir"], paths["nnz"] = d, nnz
    return paths


def test_new_commands_have_examples_in_help():
    for command in ("recommend", "evaluate", "split"):
        out = _ok(command, "--help")
        assert "examples:" in out.stdout and f"daskwals {command} " in out.stdout


def test_split_writes_disjoint_halves_with_original_ids(fitted):
    import daskwals

    def entries(path):
        r = daskwals.open_ratings(path)
        coo = _csr(r).tocoo()
        return {(r.row_ids[i], int(r.col_ids[j]), v) for i, j, v in zip(coo.row, coo.col,
                                                                          coo.data)}

    full, train, test = (entries(fitted[k]) for k in ("ratings", "train", "test"))
    assert len(full) == fitted["nnz"]
    assert train | test == full and not train & test
    assert 0.12 < len(test) / len(full) < 0.28
    # the same split in process: one seed, one split
    inproc = daskwals.splits.random_split(daskwals.open_ratings(fitted["ratings"]), 0.2, 3)
    assert _csr(inproc.test).nnz == len(test)

    d = fitted["dir"]
    _ok("split", fitted["ratings"], str(d / "loo-train.zarr"), str(d / "loo-test.zarr"),
        "--method", "leave-one-out", "--seed", "1")
    loo = daskwals.open_ratings(d / "loo-test.zarr")
    per_user = np.diff(_csr(loo).indptr)
    assert loo.shape[0] == daskwals.open_ratings(fitted["ratings"]).shape[0]
    assert np.all(per_user == 1)
    assert len(entries(d / "loo-train.zarr") | entries(d / "loo-test.zarr")) == len(full)


def test_recommend_leaves_out_rated_items_and_matches_the_model(fitted):
    import json

    import daskwals

    users = ["u00", "u07", "u33"]
    out = _ok("recommend", fitted["model"], "--users", *users, "-n", "5", "--ratings",
              fitted["train"], "--format", "json")
    result = json.loads(out.stdout)
    train = daskwals.open_ratings(fitted["train"])
    model = daskwals.open(fitted["model"], ratings=train)
    assert list(model.row_ids_) == list(train.row_ids)  # every user and item kept a train entry
    ids, scores = model.recommend(users, N=5)
    rated = _csr(train)
    for entry, user, want_ids, want_scores in zip(result, users, ids, scores):
        assert entry["user"] == user
        liked = set(train.col_ids[rated[list(train.row_ids).index(user)].indices].tolist())
        assert len(entry["items"]) == 5 and not liked & set(entry["items"])
        assert entry["items"] == want_ids.tolist()
        np.testing.assert_allclose(entry["scores"], want_scores, rtol=1e-12)
        assert entry["scores"] == sorted(entry["scores"], reverse=True)

    unfiltered = _ok("recommend", fitted["model"], "--users", "u00", "-n", "5", "--no-filter",
                     "--format", "csv")
    lines = unfiltered.stdout.strip().splitlines()
    assert lines[0] == "user,rank,item,score" and len(lines) == 6
    want = daskwals.open(fitted["model"]).recommend(["u00"], N=5, filter_already_liked=False)
    assert [int(line.split(",")[2]) for line in lines[1:]] == want[0][0].tolist()


def test_recommend_among_candidates_and_similar_items(fitted):
    import json

    import daskwals

    d = fitted["dir"]
    candidates = [1000, 1007, 1014, 1021]
    (d / "candidates.txt").write_text("# candidates\n" + "\n".join(map(str, candidates)) + "\n")
    out = _ok("recommend", fitted["model"], "--users", "u01", "u02", "--no-filter",
              "--items-file", str(d / "candidates.txt"), "-n", "3")
    table = out.stdout.strip().splitlines()
    assert table[0].split() == ["user", "rank", "item", "score"]
    assert len(table) == 7 and all(int(row.split()[2]) in candidates for row in table[1:])

    out = _ok("recommend", fitted["model"], "--similar-items", "1007", "-n", "4",
              "--format", "json")
    (entry,) = json.loads(out.stdout)
    ids, scores = daskwals.open(fitted["model"]).similar_items([1007], N=4)
    assert entry["item"] == 1007 and 1007 not in entry["similar_items"]
    assert entry["similar_items"] == ids[0].tolist()
    np.testing.assert_allclose(entry["scores"], scores[0], rtol=1e-12)


def test_recommend_refuses_unclear_requests(fitted):
    out = run("recommend", fitted["model"], "--users", "u00")
    assert out.returncode == 1 and "--ratings" in out.stderr and "--no-filter" in out.stderr
    out = run("recommend", fitted["model"], "--users", "nobody", "--no-filter")
    assert out.returncode == 1 and "'nobody'" in out.stderr
    out = run("recommend", fitted["model"], "--similar-items", "x")
    assert out.returncode == 1 and "integer ids" in out.stderr
    out = run("evaluate", fitted["model"], "--test", fitted["test"], "--ranking")
    assert out.returncode == 1 and "--train" in out.stderr


def test_evaluate_matches_the_metrics_computed_in_process(fitted):
    import json

    import daskwals
    from daskwals import metrics

    out = _ok("evaluate", fitted["model"], "--test", fitted["test"], "--train", fitted["train"],
              "--k", "5", "--batch-size", "16", "--format", "json")
    report = json.loads(out.stdout)

    ratings = daskwals.open_ratings(fitted["ratings"])
    train, test = daskwals.splits.random_split(ratings, 0.2, 3)
    model = daskwals.open(fitted["model"])
    assert list(model.col_ids_) == list(ratings.col_ids)  # the model's index space
    assert report["test_entries"] == _csr(test).nnz and report["test_entries_left_out"] == 0
    assert report["rmse"] == pytest.approx(metrics.rmse(model, test), rel=1e-9)
    assert report["mae"] == pytest.approx(metrics.mae(model, test), rel=1e-9)

    # ranking, from the factors with NumPy: top 5 of U Vᵀ outside train
    U, V = np.asarray(model.row_factors_, np.float64), np.asarray(model.col_factors_, np.float64)
    train_csr, test_csr = _csr(train), _csr(test)
    scores = U @ V.T
    scores[train_csr.nonzero()] = -np.inf
    users = np.flatnonzero(np.diff(test_csr.indptr))
    top = np.argsort(-scores, axis=1, kind="stable")[users, :5]
    assert report["k"] == 5 and report["ranked_users"] == users.size
    for name, function in (("precision", metrics.precision_at_k),
                           ("recall", metrics.recall_at_k), ("map", metrics.map_at_k),
                           ("ndcg", metrics.ndcg_at_k)):
        assert report[name] == pytest.approx(function(top, test_csr, 5, users=users), rel=1e-9)
    assert report["auc"] == pytest.approx(metrics.auc((U, V), train_csr, test_csr), rel=1e-9)
    assert 0.5 < report["auc"] <= 1

    table = _ok("evaluate", fitted["model"], "--test", fitted["test"]).stdout
    assert f"RMSE     {report['rmse']:.4f}" in table and "P@" not in table


def test_evaluate_maps_a_test_store_with_other_ids(fitted):
    """A leave-one-out test store lacks some items: its ids are mapped onto the model's."""
    import json

    import daskwals
    from daskwals import metrics

    d = fitted["dir"]
    if not (d / "loo-test.zarr").exists():
        _ok("split", fitted["ratings"], str(d / "loo-train.zarr"), str(d / "loo-test.zarr"),
            "--method", "leave-one-out", "--seed", "1")
    loo = daskwals.open_ratings(d / "loo-test.zarr")
    model = daskwals.open(fitted["model"])
    assert len(loo.col_ids) < len(model.col_ids_)
    out = _ok("evaluate", fitted["model"], "--test", str(d / "loo-test.zarr"), "--rmse",
              "--format", "json")
    report = json.loads(out.stdout)
    want = daskwals.splits.leave_k_out(daskwals.open_ratings(fitted["ratings"]), 1, seed=1).test
    assert report["test_entries"] == _csr(want).nnz == len(loo.row_ids)
    assert report["rmse"] == pytest.approx(metrics.rmse(model, want), rel=1e-9)
    assert "k" not in report
