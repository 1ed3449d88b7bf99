"""The normal-equation kernel's speed beside this machine's own matmul, in one run.

For k = 16, 64 and 128 (``--k``) it times :func:`daskwals._kernels.solve_block` on a
synthetic row block (log-normal entries per row, mean ``--mean-entries``, implicit-
feedback weights) with each solver path, and numpy's float64 matmul on one thread
(threadpoolctl) in the same process:

* rows/s and GFLOP/s, counting the flops of building and solving every row's k × k
  normal equations (t·k(k+1) + k³/3 + 2k² + 2tk for a row of t entries) whatever path
  ran, so a faster path shows as a higher rate ("normal-equation GFLOP/s");
* the ratio to matmul GFLOP/s (2·n³ flops on n = 2048, one thread);
* nnz linearity: seconds per stored entry on three block sizes (``--sizes``);
* two threads: two blocks solved at once by two Python threads (the kernels release
  the GIL), against one.

Timings use the CPU time of the calling thread (``time.thread_time``), the best of
``--repeat``, so that other processes on a shared machine disturb them less; the
two-thread figure is wall-clock. ``--crossover`` prints µs per row of the Cholesky and
Woodbury paths for fixed entry counts (how ``woodbury_max_entries`` was chosen).

For a matmul figure of the BLAS kernel the machine would pick by itself, run it with
the OpenBLAS overrides unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_kernel.py

The kernel used by OpenBLAS (threadpoolctl's "architecture") is printed and written to
the JSON file (benchmarks/results/kernel.json by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _synth  # noqa: E402

from daskwals import _kernels  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn, repeat, clock=time.thread_time):
    """The smallest of ``repeat`` timings of ``fn()`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def matmul_gflops(n=2048, repeat=5, threads=1):
    """float64 GFLOP/s of numpy's ``a @ b`` (n × n) with ``threads`` BLAS threads."""
    a = np.random.default_rng(0).random((n, n))
    b = a.copy()
    # one BLAS thread computes in the calling thread: time it with the same CPU clock
    # as the kernels; more threads need the wall clock
    clock = time.thread_time if threads == 1 else time.perf_counter
    with threadpool_limits(threads, user_api="blas"):
        seconds = best_time(lambda: a @ b, repeat, clock=clock)
    return 2.0 * n**3 / seconds / 1e9


def solve_once(args, k, method, w0=1.0, info=None):
    n_rows = args[0].shape[1] - 1
    x = np.zeros((n_rows, k))
    failed, _ = _kernels.solve_block(*args, w0, True, x, method=method, info=info)
    assert failed < 0
    return x


def kernel_rates(k, n_rows, mean_entries, n_gathered, repeat, methods):
    """Rows/s and normal-equation GFLOP/s of each method on one synthetic block."""
    args, nnz = _synth.kernel_block(n_rows, n_gathered, mean_entries, k, seed=k)
    flops = _synth.normal_equation_flops(_kernels.row_counts(args[0]), k)
    out = {"k": k, "rows": n_rows, "nnz": nnz, "gathered_rows": n_gathered}
    for method in methods:
        info = {}
        solve_once(args, k, method, info=info)
        seconds = best_time(lambda m=method: solve_once(args, k, m), repeat)
        out[method] = {
            "seconds": seconds, "rows_per_s": n_rows / seconds, "gflops": flops / seconds / 1e9,
            "woodbury_rows": info.get("woodbury_rows", 0),
        }
    return out


def nnz_linearity(k, sizes, mean_entries, repeat):
    """Seconds per stored entry of the "auto" path on blocks of ``sizes`` rows."""
    rows = []
    for n_rows in sizes:
        args, nnz = _synth.kernel_block(n_rows, max(1000, n_rows // 2), mean_entries, k, seed=1)
        seconds = best_time(lambda a=args: solve_once(a, k, "auto"), repeat)
        rows.append({"rows": n_rows, "nnz": nnz, "seconds": seconds, "ns_per_nnz":
                     seconds / nnz * 1e9})
    return rows


def two_thread_speedup(k, n_rows, mean_entries, repeat):
    """Wall-clock speed-up of two blocks solved by two threads at once over one thread."""
    blocks = [_synth.kernel_block(n_rows, max(1000, n_rows // 2), mean_entries, k, seed=s)[0]
              for s in (2, 3)]

    def serial():
        for args in blocks:
            solve_once(args, k, "auto")

    def parallel():
        threads = [threading.Thread(target=solve_once, args=(a, k, "auto")) for a in blocks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    one = best_time(serial, repeat, clock=time.perf_counter)
    two = best_time(parallel, repeat, clock=time.perf_counter)
    return {"one_thread_s": one, "two_threads_s": two, "speedup": one / two}


def crossover(ks, repeat):
    """µs per row of the Cholesky and Woodbury paths for fixed entry counts."""
    table = {}
    for k in ks:
        table[k] = {}
        for t in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160):
            if t > 1.3 * k:
                continue
            args, _ = _synth.kernel_block(2000, 4000, t, k, fixed=t, seed=t)
            table[k][t] = {
                m: best_time(lambda a=args, k=k, m=m: solve_once(a, k, m), repeat) / 2000 * 1e6
                for m in ("cholesky", "woodbury")
            }
        line = "  ".join(f"t={t}: {v['cholesky']:.1f}/{v['woodbury']:.1f}"
                         for t, v in table[k].items())
        model = next((t for t in range(1, 4 * k) if _kernels.woodbury_cost(t, t, k)
                      >= _kernels.cholesky_cost(t, k)), 4 * k)
        print(f"k={k:<4} µs/row Cholesky/Woodbury  {line}  (cost model: Woodbury below "
              f"t={model}, if the rotations pay)", flush=True)
    return table


def blas_description():
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return [{key: i.get(key) for key in ("internal_api", "architecture", "version",
                                         "num_threads", "filepath")} for i in infos]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="16,64,128", help="comma-separated ranks")
    parser.add_argument("--mean-entries", type=float, default=50.0)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows per block (default: about 0.5 s of work per k)")
    parser.add_argument("--sizes", default=None,
                        help="three block sizes (rows) for the nnz-linearity check")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--crossover", action="store_true",
                        help="also time both paths for fixed entry counts")
    parser.add_argument("--quick", action="store_true", help="smaller blocks, 3 repeats")
    parser.add_argument("--out", default=str(RESULTS / "kernel.json"))
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    repeat = 3 if args.quick else args.repeat
    scale = 0.25 if args.quick else 1.0

    blas = blas_description()
    print("BLAS:", ", ".join(f"{b['internal_api']} {b['version']} kernel={b['architecture']}"
                             for b in blas))
    print("OPENBLAS_CORETYPE =", os.environ.get("OPENBLAS_CORETYPE"),
          " OPENBLAS_L2_SIZE =", os.environ.get("OPENBLAS_L2_SIZE"))
    mm1 = matmul_gflops(threads=1, repeat=repeat)
    mm2 = matmul_gflops(threads=2, repeat=repeat)
    print(f"numpy matmul float64 2048²: {mm1:.1f} GFLOP/s on 1 thread, {mm2:.1f} on 2")

    results = {"matmul_gflops_1thread": mm1, "matmul_gflops_2threads": mm2, "blas": blas,
               "env": {v: os.environ.get(v) for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_NUM_THREADS")},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), "numpy": np.__version__},
               "mean_entries": args.mean_entries, "kernels": [], "linearity": {},
               "two_threads": {}}
    header = (f"{'k':>4} {'rows':>7} {'nnz':>9} | {'cholesky rows/s':>15} {'GFLOP/s':>7} "
              f"{'%mm':>4} | {'auto rows/s':>12} {'GFLOP/s':>7} {'%mm':>4} {'Woodbury rows':>13}")
    print("\nnormal-equation kernel, one thread (GFLOP/s = normal-equation flops / time)")
    print(header)
    print("-" * len(header))
    for k in ks:
        n_rows = args.rows or int(scale * {16: 100_000, 64: 12_000, 128: 4_000}.get(
            k, max(500, int(3e9 / (args.mean_entries * k * k + k**3)))))
        r = kernel_rates(k, n_rows, args.mean_entries, max(2000, n_rows // 2), repeat,
                         ("cholesky", "auto"))
        results["kernels"].append(r)
        c, a = r["cholesky"], r["auto"]
        print(f"{k:>4} {n_rows:>7} {r['nnz']:>9} | {c['rows_per_s']:>15,.0f} {c['gflops']:>7.1f} "
              f"{100 * c['gflops'] / mm1:>3.0f}% | {a['rows_per_s']:>12,.0f} {a['gflops']:>7.1f} "
              f"{100 * a['gflops'] / mm1:>3.0f}% {a['woodbury_rows']:>13}", flush=True)

    print("\nnnz linearity (auto path, one thread)")
    for k in ks:
        base_rows = {16: 40_000, 64: 6_000, 128: 2_000}.get(k, 2_000)
        sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
                 [int(scale * base_rows * f) for f in (1, 2, 4)])
        lin = nnz_linearity(k, sizes, args.mean_entries, repeat)
        results["linearity"][k] = lin
        print(f"k={k:<4} " + "   ".join(f"nnz={x['nnz']:>9,}: {x['seconds']:.3f} s "
                                        f"({x['ns_per_nnz']:.0f} ns/nnz)" for x in lin))

    print("\ntwo blocks on two threads vs one after the other (wall clock)")
    for k in ks:
        base_rows = {16: 40_000, 64: 6_000, 128: 2_000}.get(k, 2_000)
        sp = two_thread_speedup(k, int(scale * base_rows), args.mean_entries, repeat)
        results["two_threads"][k] = sp
        print(f"k={k:<4} one thread {sp['one_thread_s']:.3f} s, two threads "
              f"{sp['two_threads_s']:.3f} s: {sp['speedup']:.2f}×")

    if args.crossover:
        print("\nCholesky vs Woodbury path, fixed entries per row t")
        results["crossover"] = crossover(ks, repeat)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
