"""Accuracy of daskwals on two small public datasets, against simple baselines.

MovieLens latest-small (explicit 0.5-5 star ratings): RMSE on a seeded 80/20
``daskwals.splits.random_split``, for WALS in ALS mode (row_weights=col_weights=None)
and in weighted mode, on the raw ratings and on the residuals of a bias baseline,
against the global mean and that bias baseline (μ + b_u + b_i, regularised).

HetRec Last.fm 2K (implicit: listen counts): P@10, R@10, MAP@10 and NDCG@10 on a
per-user leave-one-out (``daskwals.splits.leave_k_out``), for WALS on the binary
"listened" matrix with observed weight α (W0 = 1, R_i C_j = α - 1), against
``implicit``'s ALS on the same objective (alpha = α, exact Cholesky solves), against
WALS and ``implicit`` with a per-entry confidence 1 + α_log·log(1 + count) (WALS's
``entry_weights``), and against recommending the most popular artists.

The data are not in the repository (their licences forbid it); pass their folder with
``--data`` or set DASKWALS_DATA (default: ../shared/data beside the repository)::

    python benchmarks/evaluate_real_data.py                 # both datasets, default settings
    python benchmarks/evaluate_real_data.py --only lastfm
    python benchmarks/evaluate_real_data.py --tune          # grids on a validation split

``--tune`` picks settings on a validation split carved out of train (the test split is
never looked at) and prints the grid; the defaults below are what it chose. Results
are printed as tables and written as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import scipy.sparse

import daskwals
from daskwals import metrics

REPO = Path(__file__).resolve().parents[1]

# Defaults, chosen by --tune on validation splits of train (see the module docstring).
MOVIELENS = {
    "seed": 0, "test_fraction": 0.2, "iterations": 15, "bias_reg": 3.0,
    "rank": 10, "regularization": 10.0, "unobserved_weight": 0.0,  # weighted, raw ratings
    "residual_rank": 32, "residual_regularization": 10.0,  # weighted, bias residuals
    "residual_unobserved_weight": 0.0,
    "als_regularization": 1.0,  # ALS mode (W0 = 1)
}
LASTFM = {
    "seed": 0, "iterations": 15, "rank": 64, "alpha": 10.0, "regularization": 30.0,
    "log_alpha": 0.5, "log_regularization": 10.0, "k": 10,
}


# ------------------------------------------------------------------------- data
def data_dir(given=None):
    """The shared data folder: ``given``, else $DASKWALS_DATA, else ../shared/data."""
    for candidate in (given, os.environ.get("DASKWALS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_movielens(folder):
    """MovieLens latest-small ``ratings.csv`` as a users × movies CSR of star ratings."""
    df = pd.read_csv(Path(folder) / "ml-latest-small" / "ratings.csv")
    users, _ = pd.factorize(df["userId"], sort=True)
    items, _ = pd.factorize(df["movieId"], sort=True)
    shape = (users.max() + 1, items.max() + 1)
    return scipy.sparse.csr_matrix((df["rating"].to_numpy(np.float64), (users, items)), shape)


def load_lastfm(folder):
    """HetRec Last.fm 2K ``user_artists.dat`` as a users × artists CSR of listen counts."""
    df = pd.read_csv(Path(folder) / "hetrec2011-lastfm-2k" / "user_artists.dat", sep="\t")
    users, _ = pd.factorize(df["userID"], sort=True)
    items, _ = pd.factorize(df["artistID"], sort=True)
    shape = (users.max() + 1, items.max() + 1)
    return scipy.sparse.csr_matrix((df["weight"].to_numpy(np.float64), (users, items)), shape)


def to_csr(ratings):
    """A (small) daskwals.Ratings as a scipy CSR matrix."""
    return scipy.sparse.csr_matrix(ratings.rows.compute().tocsr())


# --------------------------------------------------------------------- baselines
def bias_baseline(train, reg, sweeps=10):
    """μ, b_u, b_i minimising Σ (r - μ - b_u - b_i)² + reg (Σ b_u² + Σ b_i²), μ the mean.

    Alternating exact updates: b_i = Σ_u (r - μ - b_u) / (reg + n_i), then the same for
    b_u; ``sweeps`` rounds (it converges in a few).
    """
    coo = train.tocoo()
    n, m = train.shape
    mu = float(coo.data.mean())
    b_user, b_item = np.zeros(n), np.zeros(m)
    n_user = np.bincount(coo.row, minlength=n)
    n_item = np.bincount(coo.col, minlength=m)
    for _ in range(sweeps):
        b_item = np.bincount(coo.col, coo.data - mu - b_user[coo.row], m) / (reg + n_item)
        b_user = np.bincount(coo.row, coo.data - mu - b_item[coo.col], n) / (reg + n_user)
    return mu, b_user, b_item


def bias_predict(baseline, rows, cols):
    mu, b_user, b_item = baseline
    return mu + b_user[rows] + b_item[cols]


def residuals(matrix, baseline):
    """``matrix`` with the baseline's prediction taken off every stored entry."""
    coo = matrix.tocoo()
    data = coo.data - bias_predict(baseline, coo.row, coo.col)
    return scipy.sparse.csr_matrix((data, (coo.row, coo.col)), matrix.shape)


def popularity_top(train, users, k):
    """Top ``k`` items by number of train users, each user's own train items left out."""
    counts = np.diff(train.tocsc().indptr).astype(np.float64)
    scores = np.tile(counts, (users.size, 1))
    liked = train[users].nonzero()
    scores[liked] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# -------------------------------------------------------------------- MovieLens
def _rmse(errors):
    return float(np.sqrt(np.mean(np.square(errors))))


def fit_wals(train, rank, regularization, unobserved_weight, iterations, *, als=False,
             weight=1.0, seed=0, entry_weights=None):
    weights = {"row_weights": None, "col_weights": None} if als else {
        "row_weights": weight, "col_weights": 1.0}
    return daskwals.WALS(rank, unobserved_weight=unobserved_weight,
                         regularization=regularization, n_iter=iterations, seed=seed,
                         entry_weights=entry_weights, **weights).fit(train)


def _wals_predictions(model, rows, cols):
    U = np.asarray(model.row_factors_, np.float64)
    V = np.asarray(model.col_factors_, np.float64)
    return np.einsum("ij,ij->i", U[rows], V[cols])


def movielens_runs(train, test, p):
    """RMSE (all test entries, and the warm ones) of every model; a list of rows."""
    t = test.tocoo()
    warm = (np.diff(train.tocsc().indptr)[t.col] > 0) & (np.diff(train.indptr)[t.row] > 0)
    out = []

    def add(name, settings, predictions, seconds, **extra):
        errors = t.data - predictions
        out.append({"dataset": "movielens", "model": name, "settings": settings,
                    "rmse": _rmse(errors), "rmse_warm": _rmse(errors[warm]),
                    "mae": float(np.mean(np.abs(errors))), "fit_s": seconds, **extra})

    mu = float(train.data.mean())
    add("global mean", "", np.full(t.data.size, mu), 0.0)
    t0 = time.perf_counter()
    baseline = bias_baseline(train, p["bias_reg"])
    add("bias baseline", f"reg={p['bias_reg']:g}", bias_predict(baseline, t.row, t.col),
        time.perf_counter() - t0)
    base = bias_predict(baseline, t.row, t.col)
    resid = residuals(train, baseline)
    it = p["iterations"]
    runs = [
        ("WALS weighted, raw ratings", train, 0.0, p["rank"], p["regularization"],
         p["unobserved_weight"], False),
        ("WALS ALS mode, raw ratings", train, 0.0, p["rank"], p["als_regularization"], 1.0, True),
        ("bias + WALS weighted", resid, base, p["residual_rank"],
         p["residual_regularization"], p["residual_unobserved_weight"], False),
        ("bias + WALS ALS mode", resid, base, p["residual_rank"], p["als_regularization"], 1.0,
         True),
    ]
    for name, data, offset, rank, reg, w0, als in runs:
        t0 = time.perf_counter()
        model = fit_wals(data, rank, reg, w0, it, als=als, seed=p["seed"])
        seconds = time.perf_counter() - t0
        settings = f"k={rank} λ={reg:g} W0={w0:g}" + (" (ALS)" if als else " R=C=1")
        predictions = offset + _wals_predictions(model, t.row, t.col)
        add(name, settings, predictions, seconds)
        # the library's own metric agrees with the NumPy one on the raw fits
        if not np.ndim(offset):
            out[-1]["rmse_daskwals_metrics"] = metrics.rmse(model, test)
    return out


def movielens(folder, p=MOVIELENS):
    ratings = load_movielens(folder)
    train, test = daskwals.splits.random_split(ratings, p["test_fraction"], p["seed"])
    return movielens_runs(to_csr(train), to_csr(test), p)


def tune_movielens(folder, p=MOVIELENS):
    """Grids on a 90/10 validation split of train; prints and returns the rows."""
    ratings = load_movielens(folder)
    train, _ = daskwals.splits.random_split(ratings, p["test_fraction"], p["seed"])
    fit, val = (to_csr(r) for r in daskwals.splits.random_split(train, 0.1, p["seed"] + 1))
    v = val.tocoo()
    rows = []
    for lam in (1.0, 3.0, 5.0, 10.0, 25.0):
        base = bias_baseline(fit, lam)
        rows.append({"model": "bias", "reg": lam,
                     "rmse": _rmse(v.data - bias_predict(base, v.row, v.col))})
        print(rows[-1], flush=True)
    baseline = bias_baseline(fit, p["bias_reg"])
    resid = residuals(fit, baseline)
    offset = bias_predict(baseline, v.row, v.col)
    grid = itertools.product((("raw", fit, 0.0), ("residual", resid, offset)), (10, 32),
                             (5.0, 10.0, 20.0, 30.0), (0.0, 0.001, 0.01, 0.1))
    for (kind, data, off), rank, lam, w0 in grid:
        model = fit_wals(data, rank, lam, w0, p["iterations"], seed=p["seed"])
        rows.append({"model": f"WALS {kind}", "rank": rank, "reg": lam, "w0": w0,
                     "rmse": _rmse(v.data - off - _wals_predictions(model, v.row, v.col))})
        print(rows[-1], flush=True)
    for (kind, data, off), lam in itertools.product(
            (("raw", fit, 0.0), ("residual", resid, offset)), (0.1, 1.0, 10.0, 100.0)):
        model = fit_wals(data, 10, lam, 1.0, p["iterations"], als=True, seed=p["seed"])
        rows.append({"model": f"WALS ALS {kind}", "rank": 10, "reg": lam, "w0": 1.0,
                     "rmse": _rmse(v.data - off - _wals_predictions(model, v.row, v.col))})
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------- Last.fm
def ranking_row(name, settings, top, test, users, k, seconds):
    return {"dataset": "lastfm", "model": name, "settings": settings,
            "precision": metrics.precision_at_k(top, test, k, users=users),
            "recall": metrics.recall_at_k(top, test, k, users=users),
            "map": metrics.map_at_k(top, test, k, users=users),
            "ndcg": metrics.ndcg_at_k(top, test, k, users=users), "fit_s": seconds}


def wals_top(train_binary, users, p):
    """Top-k item indices of WALS on the binary matrix, observed weight α, W0 = 1."""
    t0 = time.perf_counter()
    model = fit_wals(train_binary, p["rank"], p["regularization"], 1.0, p["iterations"],
                     weight=p["alpha"] - 1.0, seed=p["seed"])
    seconds = time.perf_counter() - t0
    ids, _ = model.recommend(users, N=p["k"], filter_already_liked=True)
    return ids, seconds


def implicit_top(confidence, train_binary, users, p, alpha, regularization):
    """Top-k of implicit's ALS: confidence alpha·value on stored entries, 1 elsewhere."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit runs its own threads (and warns otherwise)
        model = AlternatingLeastSquares(
            factors=p["rank"], regularization=regularization, alpha=alpha,
            iterations=p["iterations"], use_cg=False, random_state=p["seed"], num_threads=0,
        )
        t0 = time.perf_counter()
        model.fit(confidence.tocsr().astype(np.float32), show_progress=False)
        seconds = time.perf_counter() - t0
        ids, _ = model.recommend(users, train_binary[users], N=p["k"],
                                 filter_already_liked_items=True)
    return ids, seconds


def lastfm_runs(train, test, p, with_implicit=True):
    binary = train.copy()
    binary.data[:] = 1.0
    users = np.flatnonzero(np.diff(test.indptr))
    k = p["k"]
    out = [ranking_row("popularity", "", popularity_top(binary, users, k), test, users, k, 0.0)]
    same = f"k={p['rank']} λ={p['regularization']:g} α={p['alpha']:g} {p['iterations']} it"
    ids, seconds = wals_top(binary, users, p)
    out.append(ranking_row("WALS binary", same + " (W0=1, R=α-1, C=1)", ids, test, users, k,
                           seconds))
    # per-entry confidence 1 + α_log·log(1 + count): W0 = 1, R = C = 1, e_ij = α_log·log(1 + count)
    log_weights = train.copy()
    log_weights.data = p["log_alpha"] * np.log1p(log_weights.data)
    t0 = time.perf_counter()
    model = fit_wals(binary, p["rank"], p["log_regularization"], 1.0, p["iterations"],
                     seed=p["seed"], entry_weights=log_weights)
    seconds = time.perf_counter() - t0
    ids, _ = model.recommend(users, N=k, filter_already_liked=True)
    out.append(ranking_row(
        "WALS log-confidence",
        f"k={p['rank']} λ={p['log_regularization']:g} W=1+{p['log_alpha']:g}·log(1+count) "
        "(entry_weights)", ids, test, users, k, seconds))
    if with_implicit:
        ids, seconds = implicit_top(binary, binary, users, p, p["alpha"], p["regularization"])
        out.append(ranking_row("implicit ALS binary", same + " (same objective)", ids, test,
                               users, k, seconds))
        log_conf = train.copy()
        log_conf.data = 1.0 + p["log_alpha"] * np.log1p(log_conf.data)
        ids, seconds = implicit_top(log_conf, binary, users, p, 1.0, p["log_regularization"])
        out.append(ranking_row(
            "implicit ALS log-confidence",
            f"k={p['rank']} λ={p['log_regularization']:g} c=1+{p['log_alpha']:g}·log(1+count)",
            ids, test, users, k, seconds))
    return out


def have_implicit():
    try:
        import implicit.cpu.als  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def lastfm(folder, p=LASTFM):
    counts = load_lastfm(folder)
    train, test = daskwals.splits.leave_k_out(counts, 1, seed=p["seed"], min_interactions=2)
    return lastfm_runs(to_csr(train), to_csr(test), p, with_implicit=have_implicit())


def tune_lastfm(folder, p=LASTFM):
    """Grid of WALS (and implicit log-confidence) on a leave-one-out of train."""
    counts = load_lastfm(folder)
    train, _ = daskwals.splits.leave_k_out(counts, 1, seed=p["seed"], min_interactions=2)
    fit, val = (to_csr(r) for r in daskwals.splits.leave_k_out(
        train, 1, seed=p["seed"] + 1, min_interactions=2))
    binary = fit.copy()
    binary.data[:] = 1.0
    users = np.flatnonzero(np.diff(val.indptr))
    rows = []
    for alpha, lam in itertools.product((3.0, 10.0, 30.0), (1.0, 10.0, 30.0)):
        q = dict(p, alpha=alpha, regularization=lam)
        ids, _ = wals_top(binary, users, q)
        rows.append({"model": "WALS", "alpha": alpha, "reg": lam,
                     "ndcg": metrics.ndcg_at_k(ids, val, p["k"], users=users)})
        print(rows[-1], flush=True)
    if have_implicit():
        for log_alpha in (0.5, 1.0, 2.0):
            conf = fit.copy()
            conf.data = 1.0 + log_alpha * np.log1p(conf.data)
            ids, _ = implicit_top(conf, binary, users, p, 1.0, p["log_regularization"])
            rows.append({"model": "implicit log", "log_alpha": log_alpha,
                         "reg": p["log_regularization"],
                         "ndcg": metrics.ndcg_at_k(ids, val, p["k"], users=users)})
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------ report
def print_table(rows):
    ml = [r for r in rows if r["dataset"] == "movielens"]
    fm = [r for r in rows if r["dataset"] == "lastfm"]
    if ml:
        print("\nMovieLens latest-small, random 80/20 split: RMSE on the test ratings")
        print(f"{'model':30s} {'RMSE':>7s} {'warm':>7s} {'MAE':>7s} {'fit s':>6s}  settings")
        for r in ml:
            print(f"{r['model']:30s} {r['rmse']:7.4f} {r['rmse_warm']:7.4f} {r['mae']:7.4f} "
                  f"{r['fit_s']:6.1f}  {r['settings']}")
        print("(warm: test entries whose user and item both have train ratings)")
    if fm:
        k = LASTFM["k"]
        print(f"\nHetRec Last.fm 2K, leave-one-out per user: ranking at {k}")
        print(f"{'model':30s} {'P@' + str(k):>7s} {'R@' + str(k):>7s} {'MAP@' + str(k):>7s} "
              f"{'NDCG@' + str(k):>7s} {'fit s':>6s}  settings")
        for r in fm:
            print(f"{r['model']:30s} {r['precision']:7.4f} {r['recall']:7.4f} {r['map']:7.4f} "
                  f"{r['ndcg']:7.4f} {r['fit_s']:6.1f}  {r['settings']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the data folder (default $DASKWALS_DATA or "
                        "../shared/data beside the repository)")
    parser.add_argument("--only", choices=["movielens", "lastfm"])
    parser.add_argument("--tune", action="store_true",
                        help="run the validation grids instead of the evaluation")
    parser.add_argument("--threads", type=int, default=None,
                        help="dask threads (default: one per core)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    folder = data_dir(args.data)
    if folder is None:
        print("no data folder: pass --data or set DASKWALS_DATA", file=sys.stderr)
        return 2
    dask.config.set(scheduler="threads", num_workers=args.threads)
    rows = []
    t0 = time.perf_counter()
    if args.only in (None, "movielens"):
        rows += tune_movielens(folder) if args.tune else movielens(folder)
    if args.only in (None, "lastfm"):
        rows += tune_lastfm(folder) if args.tune else lastfm(folder)
    if not args.tune:
        print_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"real_data{'_tune' if args.tune else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {"rows": rows, "movielens": MOVIELENS, "lastfm": LASTFM,
              "seconds": time.perf_counter() - t0, "python": platform.python_version(),
              "daskwals": daskwals.__version__, "cpus": os.cpu_count()}
    (out / name).write_text(json.dumps(record, indent=1, default=float))
    print(f"\nwrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
