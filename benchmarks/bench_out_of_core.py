"""Out-of-core benchmark: fit a ratings store several times larger than the cluster's memory.

Writes (once) a synthetic ratings store with ``daskwals.write_synthetic``, starts a
LocalCluster with a per-worker memory limit, and fits ``WALS`` with streamed factors
(``use_factors_weights_cache=False``) while a monitor samples every worker's RSS and
status. Then fits a smaller matrix with the same statistics (same items, item
popularity and per-user activity, fewer users) held in cluster memory, with cached
factors, on a cluster with the same workers and threads but room for it in memory
(``--in-memory-limit``), and reports the ratio of throughputs (stored entries per second
per iteration).

The figures of the out-of-core issue's closing note (a 4.4 GiB store, 4.3x the memory
of two 512 MiB workers; writing the store takes about 25 minutes once)::

    python benchmarks/bench_out_of_core.py --users 1000000 --items 200000 \\
        --nnz 340000000 --workers 2 --memory-limit 512MiB --workdir /scratch/ooc

Prints a table and writes JSON to benchmarks/results/out_of_core.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np


def du_bytes(path):
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def parse_bytes(text):
    from dask.utils import parse_bytes as parse

    return parse(text)


class Monitor:
    """Samples every worker's RSS and status in a background thread."""

    def __init__(self, client, interval=0.5):
        self.client = client
        self.interval = interval
        self.peak = {}
        self.paused = set()
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.workers_before = set(self.client.scheduler_info()["workers"])
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.workers_after = set(self.client.scheduler_info()["workers"])

    def _run(self):
        import psutil

        def rss():
            return psutil.Process().memory_info().rss

        while not self._stop.is_set():
            try:
                values = self.client.run(rss)
                info = self.client.scheduler_info()["workers"]
            except Exception:  # noqa: BLE001 - a sample lost while a worker restarts
                time.sleep(self.interval)
                continue
            now = time.time()
            for addr, value in values.items():
                self.peak[addr] = max(self.peak.get(addr, 0), value)
                self.samples.append((now, addr, value))
            for addr, w in info.items():
                if w.get("status") == "paused":
                    self.paused.add(addr)
            time.sleep(self.interval)


def fit(ratings, args, cache, store, client, n_iter):
    import daskwals

    times = []
    last = [time.perf_counter()]

    def on_iteration(model, iteration, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        print(f"    iteration {iteration}: loss {loss:.6g} ({times[-1]:.1f} s)", flush=True)

    model = daskwals.WALS(
        args.rank, unobserved_weight=0.1, regularization=0.1, n_iter=n_iter,
        seed=0, store=store, overwrite=True, use_factors_weights_cache=cache,
        callback=on_iteration,
    )
    t0 = time.perf_counter()
    model.fit(ratings)
    return model, times, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--nnz", type=int, default=40_000_000)
    parser.add_argument("--rows-per-block", type=int, default=None,
                        help="default: about 400k stored entries per row block")
    parser.add_argument("--cols-per-block", type=int, default=None,
                        help="default: about 400k stored entries per column block")
    parser.add_argument("--popularity-exponent", type=float, default=0.5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--in-memory-iterations", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--cache-factors", action="store_true",
                        help="fit the big store with use_factors_weights_cache=True (ratings "
                             "still read from disk by the solve tasks; each worker holds the "
                             "fixed factor) instead of streamed factors")
    parser.add_argument("--memory-limit", default="700MiB")
    parser.add_argument("--in-memory-limit", default="4GiB",
                        help="per-worker limit of the in-memory comparison's cluster")
    parser.add_argument("--small-fraction", type=float, default=0.05,
                        help="users (and entries) of the in-memory comparison, as a fraction")
    parser.add_argument("--workdir", default="benchmarks/results/ooc")
    parser.add_argument("--keep", action="store_true", help="keep the generated stores")
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    import daskwals

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    per_user = args.nnz / args.users
    rows_block = args.rows_per_block or max(1, int(400_000 / per_user))
    cols_block = args.cols_per_block or max(1, int(args.items * 400_000 / args.nnz))
    big = workdir / f"ratings-{args.users}x{args.items}-{args.nnz}.zarr"
    if not big.exists():
        print(f"writing {big} ...", flush=True)
        t0 = time.perf_counter()
        daskwals.write_synthetic(big, args.users, args.items, args.nnz, rank=16, seed=0,
                                 chunks=(rows_block, cols_block), implicit=False,
                                 popularity_exponent=args.popularity_exponent)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    small_users = max(1000, int(args.users * args.small_fraction))
    small_nnz = int(args.nnz * small_users / args.users)
    # the same entries per block as the big store: the column blocks widen as users shrink
    small_cols_block = min(args.items, int(round(cols_block * args.nnz / small_nnz)))
    small = workdir / f"ratings-{small_users}x{args.items}-{small_nnz}-{small_cols_block}.zarr"
    if not small.exists():
        daskwals.write_synthetic(small, small_users, args.items, small_nnz, rank=16, seed=1,
                                 chunks=(rows_block, small_cols_block), implicit=False,
                                 popularity_exponent=args.popularity_exponent)

    from daskwals._graph import column_groups

    row_sizes = [rows_block] * -(-args.users // rows_block)
    col_sizes = [cols_block] * -(-args.items // cols_block)
    row_groups = len(column_groups(col_sizes, args.rank))
    col_groups = len(column_groups(row_sizes, args.rank))
    tasks = len(row_sizes) * (row_groups + 1) + len(col_sizes) * (col_groups + 1)
    print(f"blocks {len(row_sizes):,} × {len(col_sizes):,}; gather groups {row_groups} (row "
          f"sweep) and {col_groups} (column sweep): about {tasks:,} gather and solve tasks "
          "per iteration", flush=True)
    limit = parse_bytes(args.memory_limit)
    disk = du_bytes(big)
    ratings = daskwals.open_ratings(big)
    print(f"ratings store {disk / 2**30:.2f} GiB on disk, {ratings.nnz:,} entries, blocks "
          f"{ratings.chunks[0][0]:,} × {ratings.chunks[1][0]:,}; cluster memory "
          f"{args.workers} × {args.memory_limit} = {args.workers * limit / 2**30:.2f} GiB, "
          f"{args.threads_per_worker} thread(s) per worker "
          f"(ratio {disk / (args.workers * limit):.1f}×)", flush=True)

    results = {"args": vars(args), "disk_bytes": disk, "cluster_memory": args.workers * limit,
               "nnz": ratings.nnz, "chunks": [ratings.chunks[0][0], ratings.chunks[1][0]]}
    def cluster(memory_limit):
        return LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads_per_worker,
            memory_limit=memory_limit,
            processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL,
            env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1"},
        )

    with dask.config.set({"distributed.worker.daemon": False}), \
            cluster(args.memory_limit) as big_cluster, Client(big_cluster) as client:
        mode = "cached factors" if args.cache_factors else "streamed factors"
        print(f"out of core ({mode}):", flush=True)
        with Monitor(client) as mon:
            model, times, total = fit(ratings, args, args.cache_factors,
                                      workdir / "model-big.zarr", client, args.iterations)
        results["out_of_core"] = {
            "seconds_per_iteration": times, "total_seconds": total,
            "peak_rss_per_worker": sorted(mon.peak.values()),
            "paused_workers": len(mon.paused),
            "restarted_workers": len(mon.workers_before - mon.workers_after),
            "loss_history": model.loss_history_,
        }
    with dask.config.set({"distributed.worker.daemon": False}), \
            cluster(args.in_memory_limit) as small_cluster, Client(small_cluster) as client:
        small_ratings = daskwals.open_ratings(small).persist()
        print(f"in memory ({small_ratings.nnz:,} entries, persisted, cached factors):",
              flush=True)
        with Monitor(client) as mon_small:
            model_s, times_s, total_s = fit(small_ratings, args, True,
                                            workdir / "model-small.zarr", client,
                                            args.in_memory_iterations)
        results["in_memory"] = {
            "nnz": small_ratings.nnz, "seconds_per_iteration": times_s,
            "peak_rss_per_worker": sorted(mon_small.peak.values()),
            "memory_limit": args.in_memory_limit,
        }
    # steady state: the first iteration also opens the store, writes the initial factors
    # and loads the compiled kernels in every worker
    steady, steady_s = times[1:] or times, times_s[1:] or times_s
    ooc = ratings.nnz / np.mean(steady)
    mem = small_ratings.nnz / np.mean(steady_s)
    results["throughput_entries_per_s"] = {"out_of_core": ooc, "in_memory": mem,
                                           "ratio": ooc / mem}
    r = results["out_of_core"]

    def row(name, nnz, t, rate, peaks):
        each = " / ".join(f"{x:.1f}" for x in t)
        mib = ", ".join(f"{p / 2**20:.0f}" for p in peaks)
        print(f"| {name} | {nnz:,} | {each} | {rate:,.0f} | {mib} |")

    print()
    print("| run | entries | s / iteration (each) | entries / s (after the first) | "
          "peak RSS per worker (MiB) |")
    print("| --- | ---: | ---: | ---: | --- |")
    row(f"out of core, {'cached' if args.cache_factors else 'streamed'} factors", ratings.nnz,
        times, ooc, r["peak_rss_per_worker"])
    row("in memory, cached factors", small_ratings.nnz, times_s, mem,
        results["in_memory"]["peak_rss_per_worker"])
    print(f"\nthroughput ratio out-of-core / in-memory: {ooc / mem:.2f}")
    print(f"memory limit {limit / 2**20:.0f} MiB per worker (in-memory run: "
          f"{args.in_memory_limit}); paused workers: "
          f"{r['paused_workers']}; restarted workers: {r['restarted_workers']}")
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "out_of_core.json").write_text(json.dumps(results, indent=2, default=float))
    if not args.keep:
        for path in (workdir / "model-big.zarr", workdir / "model-small.zarr"):
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
