"""daskwals against implicit's CPU ALS, side by side, on the same objective and start.

implicit (https://github.com/benfred/implicit) minimises, for binary input P and
confidence α on the stored entries,

    Σ_ij c_ij (p_ij − u_i·v_j)² + λ (‖U‖² + ‖V‖²),   c_ij = α on stored entries, 1 elsewhere

which is daskwals' WALS objective with ``unobserved_weight=1``, ``row_weights=α-1``,
``col_weights=1`` and ``regularization=λ``. Both start from the same U0, V0 (implicit's
own init, uniform in [0, 0.01)) and run rows then columns each iteration.

For each dataset (a synthetic power-law / log-normal matrix, and the data sets in
../shared/data when present) and each k it reports, in one run:

* seconds per iteration (median) of daskwals with the threaded scheduler (2 threads, and
  1 for the scaling ratio), daskwals on a LocalCluster of 2 (and 1) single-thread
  workers, implicit's ALS with ``use_cg=True`` (approximate, 3 CG steps) and with
  ``use_cg=False`` (exact Cholesky), 2 threads, BLAS limited to one thread;
* the final objective of each, evaluated by one NumPy function from the final factors,
  and its ratio to implicit-Cholesky's;
* peak resident memory of the process tree during each run;
* the normal-equation kernel's GFLOP/s beside numpy's matmul GFLOP/s (one thread each);
* with ``--linearity``: daskwals seconds per iteration at nnz/4, nnz/2 and nnz.

A table goes to stdout and JSON to benchmarks/results/vs_implicit.json (``--out``)::

    python benchmarks/bench_vs_implicit.py --quick          # < 2 minutes
    python benchmarks/bench_vs_implicit.py                  # 200k × 50k, 5M, k = 16/64/128

implicit, psutil and threadpoolctl are benchmark extras (``pip install daskwals[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns about BLAS threads
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import dask  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import scipy.sparse  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _synth  # noqa: E402
import bench_kernel  # noqa: E402

import daskwals  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench_vs_implicit")
RUNS = "implicit-cg,implicit-chol,threads2,threads1,cluster2,cluster1"


# ------------------------------------------------------------------------ data
def data_dir(given=None):
    for candidate in (given, os.environ.get("DASKWALS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _binary_from_ids(users, items):
    import pandas as pd

    u, _ = pd.factorize(users, sort=True)
    i, _ = pd.factorize(items, sort=True)
    return scipy.sparse.csr_matrix((np.ones(u.size), (u, i)), shape=(u.max() + 1, i.max() + 1))


def load_real(folder):
    """Binary matrices of the shared data sets that are present: {name: csr}."""
    import pandas as pd

    out = {}
    ml = Path(folder) / "ml-latest-small" / "ratings.csv"
    if ml.exists():
        df = pd.read_csv(ml)
        out["movielens-small (rated)"] = _binary_from_ids(df["userId"], df["movieId"])
    fm = Path(folder) / "hetrec2011-lastfm-2k" / "user_artists.dat"
    if fm.exists():
        df = pd.read_csv(fm, sep="\t")
        out["lastfm-2k (listened)"] = _binary_from_ids(df["userID"], df["artistID"])
    return out


# ------------------------------------------------------------------- objective
def objective(csr, U, V, alpha, lam, chunk=20_000):
    """Σ c (p − u·v)² + λ(‖U‖² + ‖V‖²) for binary ``csr``, c = α stored, 1 elsewhere.

    Never forms U Vᵀ: Σ_all (u·v)² = tr(UᵀU VᵀV), and on the stored entries the
    weight-α term replaces the weight-1 one.
    """
    U = np.asarray(U, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    sparse_term = 0.0
    for start in range(0, csr.shape[0], chunk):
        block = csr[start : start + chunk].tocoo()
        p = np.einsum("ij,ij->i", U[start + block.row], V[block.col])
        sparse_term += float(np.sum(alpha * (1.0 - p) ** 2 - p**2))
    dense_term = float(np.sum((U.T @ U) * (V.T @ V)))
    return sparse_term + dense_term + lam * float(np.sum(U**2) + np.sum(V**2))


# ---------------------------------------------------------------------- memory
class PeakRSS:
    """Peak resident memory (MiB) of this process and its children while active."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        proc = psutil.Process()
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mib(self):
        return self.peak / 2**20


# ------------------------------------------------------------------------ runs
def run_implicit(csr, k, U0, V0, *, iterations, alpha, lam, use_cg, threads):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=k, regularization=lam, alpha=alpha, use_cg=use_cg, iterations=iterations,
        calculate_training_loss=False, num_threads=threads, random_state=0,
    )
    model.user_factors = U0.astype(np.float32, copy=True)
    model.item_factors = V0.astype(np.float32, copy=True)
    times = []
    with threadpool_limits(1, user_api="blas"), PeakRSS() as mem:
        model.fit(csr.astype(np.float32), show_progress=False,
                  callback=lambda it, elapsed, loss: times.append(elapsed))
    return {"times": times, "U": model.user_factors, "V": model.item_factors, "peak_mib": mem.mib}


def wals_params(k, U0, V0, *, iterations, alpha, lam, chunks, extra):
    params = dict(
        unobserved_weight=1.0, regularization=lam, row_weights=alpha - 1.0, col_weights=1.0,
        n_iter=iterations, row_init=U0, col_init=V0, dtype="float32", chunks=chunks,
    )
    accepted = inspect.signature(daskwals.WALS.__init__).parameters
    params.update({key: v for key, v in extra.items() if key in accepted})
    return params


def run_daskwals(csr, k, U0, V0, *, iterations, alpha, lam, chunks, extra, scheduler):
    """Fit with the current dask scheduler; per-iteration wall-clock times from callbacks."""
    stamps = []
    params = wals_params(k, U0, V0, iterations=iterations, alpha=alpha, lam=lam, chunks=chunks,
                         extra=extra)
    model = daskwals.WALS(k, callback=lambda m, it, loss: stamps.append(time.perf_counter()),
                          **params)
    with PeakRSS() as mem, scheduler():
        start = time.perf_counter()
        model.fit(csr)
        U = np.asarray(model.row_factors_)
        V = np.asarray(model.col_factors_)
    times = np.diff([start, *stamps]).tolist()
    return {"times": times, "U": U, "V": V, "peak_mib": mem.mib,
            "own_loss": float(model.loss_history_[-1])}


def threaded(n):
    @contextlib.contextmanager
    def scheduler():
        with dask.config.set(scheduler="threads", num_workers=n), \
                threadpool_limits(1, user_api="blas"):
            yield
    return scheduler


def warm_up(scheduler, k_values, extra):
    """Load the numba kernels (from their on-disk cache) where the timed fits will run."""
    csr = _synth.power_law_matrix(400, 200, 4000, seed=1)
    for k in k_values:
        rng = np.random.default_rng(0)
        U0, V0 = rng.random((400, k)) * 0.01, rng.random((200, k)) * 0.01
        params = wals_params(k, U0, V0, iterations=1, alpha=10.0, lam=0.1, chunks=(100, 50),
                             extra=extra)
        with scheduler():
            daskwals.WALS(k, **params).fit(csr)


@contextlib.contextmanager
def local_cluster(n_workers):
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.CRITICAL, memory_limit="6GiB",
            env={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
    client = Client(cluster, set_as_default=False)

    @contextlib.contextmanager
    def scheduler():
        with dask.config.set(scheduler=client.get):
            yield
    try:
        yield scheduler
    finally:
        client.close()
        cluster.close()


# ---------------------------------------------------------------------- report
def summarise(name, result, csr, alpha, lam):
    times = result["times"]
    return {
        "run": name, "seconds_per_iteration": float(np.median(times)), "iteration_times": times,
        "objective": objective(csr, result["U"], result["V"], alpha, lam),
        "own_loss": result.get("own_loss"), "peak_mib": result["peak_mib"],
    }


def print_table(rows):
    header = (f"{'dataset':<26} {'k':>4} {'run':<28} {'s/iter':>8} {'objective':>14} "
              f"{'obj/chol':>9} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dataset']:<26} {r['k']:>4} {r['run']:<28} {r['seconds_per_iteration']:>8.3f} "
              f"{r['objective']:>14.6g} {r['objective_vs_cholesky']:>9.5f} {r['peak_mib']:>9.0f}")


def ratios(rows):
    """Per (dataset, k): speed ratios to implicit CG, loss ratio to implicit Cholesky."""
    out = []
    keys = sorted({(r["dataset"], r["k"]) for r in rows}, key=lambda x: (x[0], x[1]))
    for ds, k in keys:
        group = {r["run"]: r for r in rows if r["dataset"] == ds and r["k"] == k}
        cg = group.get("implicit cg (2 thr)")
        entry = {"dataset": ds, "k": k}
        for name, r in group.items():
            if name.startswith("daskwals") and cg:
                entry[f"{name}: implicit-cg s/iter ÷ this"] = (
                    cg["seconds_per_iteration"] / r["seconds_per_iteration"])
        for a, b in (("daskwals threads (2)", "daskwals threads (1)"),
                     ("daskwals cluster (2×1)", "daskwals cluster (1×1)")):
            if a in group and b in group:
                entry[f"{a} speed-up over {b}"] = (
                    group[b]["seconds_per_iteration"] / group[a]["seconds_per_iteration"])
        out.append(entry)
    return out


# ------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--nnz", type=int, default=5_000_000)
    parser.add_argument("--k", default="16,64,128")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--regularization", type=float, default=0.1)
    parser.add_argument("--blocks", type=int, default=None,
                        help="row and column blocks of the ratings for daskwals (default: "
                        "one per 250,000 stored entries, between 4 and 16)")
    parser.add_argument("--runs", default=RUNS, help="comma-separated subset of the runs")
    parser.add_argument("--solver", default=None,
                        help="daskwals solver (passed when the estimator accepts it)")
    parser.add_argument("--data", default=None, help="folder of the real data sets")
    parser.add_argument("--no-real", action="store_true", help="skip the real data sets")
    parser.add_argument("--linearity", action="store_true",
                        help="daskwals (2 threads) at nnz/4, nnz/2 and nnz, largest k")
    parser.add_argument("--quick", action="store_true",
                        help="20k × 5k, 500k entries, k = 16,64, 2 iterations, no one-worker "
                        "cluster (about 2 minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "vs_implicit.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items, args.nnz, args.iterations = 20_000, 5_000, 500_000, 2
        if args.k == "16,64,128":
            args.k = "16,64"
        if args.runs == RUNS:  # the one-worker cluster only serves a scaling ratio
            args.runs = RUNS.replace(",cluster1", "")
    ks = [int(k) for k in args.k.split(",")]
    runs = set(args.runs.split(","))
    extra = {} if args.solver is None else {"solver": args.solver}
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    t0 = time.perf_counter()
    datasets = {f"synthetic {args.users // 1000}k×{args.items // 1000}k/{args.nnz / 1e6:g}M":
                _synth.power_law_matrix(args.users, args.items, args.nnz, seed=args.seed)}
    folder = None if args.no_real else data_dir(args.data)
    if folder is not None:
        datasets.update(load_real(folder))
    print(f"data ready in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{name} {m.shape[0]}×{m.shape[1]} nnz={m.nnz:,}" for name, m in datasets.items()))

    mm1 = bench_kernel.matmul_gflops(threads=1)
    kernel = {}
    for k in ks:
        n_rows = {16: 50_000, 64: 6_000, 128: 2_000}.get(k, 2_000)
        kernel[k] = bench_kernel.kernel_rates(k, n_rows, 25.0, max(2000, n_rows // 2), 3,
                                              ("cholesky", "auto"))
    blas = bench_kernel.blas_description()
    print("BLAS: " + ", ".join(f"{b['internal_api']} {b['version']} kernel={b['architecture']}"
                               for b in blas) + f"; matmul float64 1 thread {mm1:.1f} GFLOP/s")
    for k, r in kernel.items():
        print(f"k={k:<4} normal-equation kernel (1 thread, ≈25 entries/row): auto "
              f"{r['auto']['gflops']:.1f} GFLOP/s = {100 * r['auto']['gflops'] / mm1:.0f}% "
              f"of matmul (Cholesky path only: {r['cholesky']['gflops']:.1f} GFLOP/s, "
              f"{100 * r['cholesky']['gflops'] / mm1:.0f}%)")

    rows = []

    def record(ds, csr, k, name, result):
        r = summarise(name, result, csr, args.alpha, args.regularization)
        r.update(dataset=ds, k=k)
        rows.append(r)
        print(f"  {ds} k={k} {name}: {r['seconds_per_iteration']:.3f} s/iter, objective "
              f"{r['objective']:.6g}, peak {r['peak_mib']:.0f} MiB", flush=True)

    common = dict(iterations=args.iterations, alpha=args.alpha, lam=args.regularization)
    starts = {}
    for ds, csr in datasets.items():
        for k in ks:
            rng = np.random.default_rng(args.seed)
            starts[ds, k] = (rng.random((csr.shape[0], k), dtype=np.float32) * 0.01,
                             rng.random((csr.shape[1], k), dtype=np.float32) * 0.01)

    def chunks_of(csr):
        blocks = args.blocks or int(np.clip(csr.nnz // 250_000, 4, 16))
        return (-(-csr.shape[0] // blocks), -(-csr.shape[1] // blocks))

    for ds, csr in datasets.items():
        for k in ks:
            U0, V0 = starts[ds, k]
            for name, use_cg in (("implicit cg (2 thr)", True), ("implicit chol (2 thr)", False)):
                if ("implicit-cg" if use_cg else "implicit-chol") in runs:
                    record(ds, csr, k, name, run_implicit(csr, k, U0, V0, use_cg=use_cg,
                                                          threads=2, **common))
    for n in (2, 1):
        if f"threads{n}" not in runs:
            continue
        warm_up(threaded(n), ks, extra)
        for ds, csr in datasets.items():
            for k in ks:
                U0, V0 = starts[ds, k]
                record(ds, csr, k, f"daskwals threads ({n})",
                       run_daskwals(csr, k, U0, V0, chunks=chunks_of(csr), extra=extra,
                                    scheduler=threaded(n), **common))
    for n in (2, 1):
        if f"cluster{n}" not in runs:
            continue
        with local_cluster(n) as scheduler:
            warm_up(scheduler, ks, extra)
            for ds, csr in datasets.items():
                for k in ks:
                    U0, V0 = starts[ds, k]
                    record(ds, csr, k, f"daskwals cluster ({n}×1)",
                           run_daskwals(csr, k, U0, V0, chunks=chunks_of(csr), extra=extra,
                                        scheduler=scheduler, **common))

    for ds, k in {(r["dataset"], r["k"]) for r in rows}:
        group = [r for r in rows if r["dataset"] == ds and r["k"] == k]
        chol = next((r for r in group if r["run"] == "implicit chol (2 thr)"), None)
        for r in group:
            r["objective_vs_cholesky"] = (r["objective"] / chol["objective"]) if chol else \
                float("nan")
    rows.sort(key=lambda r: (list(datasets).index(r["dataset"]), r["k"], r["run"]))

    linearity = []
    if args.linearity:
        k = max(ks)
        warm_up(threaded(2), [k], extra)
        for f in (4, 2, 1):
            csr = _synth.power_law_matrix(args.users // f, args.items, args.nnz // f,
                                          seed=args.seed)
            rng = np.random.default_rng(args.seed)
            U0 = rng.random((csr.shape[0], k), dtype=np.float32) * 0.01
            V0 = rng.random((csr.shape[1], k), dtype=np.float32) * 0.01
            res = run_daskwals(csr, k, U0, V0, chunks=chunks_of(csr), extra=extra,
                               scheduler=threaded(2), **common)
            s = float(np.median(res["times"]))
            linearity.append({"users": csr.shape[0], "nnz": csr.nnz, "k": k,
                              "seconds_per_iteration": s, "us_per_nnz": s / csr.nnz * 1e6})
            print(f"  linearity k={k} nnz={csr.nnz:,}: {s:.3f} s/iter "
                  f"({s / csr.nnz * 1e6:.3f} µs per stored entry)", flush=True)

    print()
    print_table(rows)
    summary = ratios(rows)
    print()
    for entry in summary:
        print(f"{entry['dataset']} k={entry['k']}: " + "; ".join(
            f"{key} = {value:.2f}" for key, value in entry.items()
            if key not in ("dataset", "k")))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s. Timings are wall clock on a shared "
          "machine: see the README for how to read them.")

    result = {
        "command": " ".join(sys.argv), "args": vars(args), "rows": rows, "ratios": summary,
        "linearity": linearity, "matmul_gflops_1thread": mm1, "kernel": kernel, "blas": blas,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "daskwals": daskwals.__version__ if hasattr(daskwals, "__version__")
                    else None, "load_average": os.getloadavg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"written {out}")


if __name__ == "__main__":
    main()
