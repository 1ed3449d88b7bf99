"""The ``daskwals`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time

import numpy as np

from .store import StoreLockedError

__all__ = ["main"]

EPILOG_DEMO = """examples:
  daskwals demo                              # 20,000 × 5,000 on a 2-worker LocalCluster
  daskwals demo --users 2000 --items 500 --iterations 3
  daskwals demo --scheduler tcp://10.0.0.5:8786 --store /shared/demo.zarr
"""

EPILOG_INGEST = """examples:
  daskwals ingest ratings.csv ratings.zarr --user userId --item movieId --rating rating
  daskwals ingest 'events/*.parquet' events.zarr --user user_id --item item_id \
      --rating clicks --chunks 100000 20000
"""

EPILOG_FIT = """examples:
  daskwals fit ratings.zarr model.zarr --rank 64 --iterations 10 --regularization 0.1
  daskwals fit ratings.zarr model.zarr --no-cache --workers 2 --memory-limit 1GiB
  daskwals fit ratings.zarr model.zarr --resume          # continue an interrupted fit
  daskwals fit ratings.npz model.zarr --als              # a scipy.sparse .npz file
"""

EPILOG_GENERATE = """examples:
  daskwals generate synth.zarr --users 200000 --items 50000 --nnz 5000000
"""

EPILOG_INFO = """examples:
  daskwals info model.zarr
"""



@contextlib.contextmanager
def cluster_client(args):
    """A dask.distributed Client: joined (--scheduler) or on an embedded LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    if args.scheduler:
        client = Client(args.scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    # Numba's own thread pool is not pinned by the nannies: one thread per dask thread.
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
            env=env,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        _quiet_distributed(logging.CRITICAL)  # shutdown chatter is not the user's concern
        client.close()
        cluster.close()


def _quiet_distributed(level):
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def _add_cluster_options(parser):
    group = parser.add_argument_group("cluster")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="join a running dask scheduler instead of starting a LocalCluster")
    group.add_argument("--workers", type=int, default=2,
                       help="worker processes of the embedded LocalCluster (default 2)")
    group.add_argument("--threads-per-worker", type=int, default=1,
                       help="threads per worker (default 1)")
    group.add_argument("--memory-limit", default="auto",
                       help="memory limit per worker, e.g. 2GiB (default: share of RAM)")


def _dashboard(client):
    link = getattr(client, "dashboard_link", None)
    return link or "unavailable (install bokeh for the dashboard)"


# ---------------------------------------------------------------------- demo
def cmd_demo(args):
    from tqdm.auto import tqdm

    import daskwals
    from daskwals.synthetic import leave_one_out, planted_implicit

    t0 = time.perf_counter()
    print(f"generating a planted rank-{args.planted_rank} implicit-feedback matrix: "
          f"{args.users:,} users × {args.items:,} items, ~{args.per_user} interactions each")
    data = planted_implicit(args.users, args.items, rank=args.planted_rank,
                            mean_per_user=args.per_user, seed=args.seed)
    train, test_rows, test_cols = leave_one_out(data.matrix, seed=args.seed)
    print(f"  {data.matrix.nnz:,} interactions; {test_rows.size:,} held out (one per user) "
          f"in {time.perf_counter() - t0:.1f} s")

    with cluster_client(args) as client:
        print(f"dask cluster: {len(client.scheduler_info()['workers'])} workers; "
              f"dashboard: {_dashboard(client)}")
        store = args.store or os.path.abspath("daskwals-demo.zarr")
        bar = tqdm(total=args.iterations, desc="fitting", unit="iter", file=sys.stdout)

        def on_iteration(model, iteration, loss):
            bar.update(1)
            bar.write(f"iteration {iteration:3d}: loss {loss:.6g}")

        model = daskwals.WALS(
            args.rank,
            unobserved_weight=args.unobserved_weight,
            regularization=args.regularization,
            row_weights=args.alpha,
            col_weights=1.0,
            n_iter=args.iterations,
            seed=args.seed,
            store=store,
            overwrite=True,
            callback=on_iteration,
        )
        t_fit = time.perf_counter()
        model.fit(train)
        bar.close()
        fit_s = time.perf_counter() - t_fit
        print(f"fitted in {fit_s:.1f} s ({fit_s / max(1, args.iterations):.2f} s per iteration)")

        rng = np.random.default_rng(args.seed)
        sample = np.sort(rng.choice(test_rows.size, min(args.eval_users, test_rows.size),
                                    replace=False))
        users, truth = test_rows[sample], test_cols[sample]
        ids, _ = model.recommend(users, N=10, filter_already_liked=True)
        hit_model = float(np.mean(np.any(ids == truth[:, None], axis=1)))
        hit_pop = _popularity_hit_rate(train, users, truth, 10)
        print(f"held-out hit rate @10 on {users.size:,} users: WALS {hit_model:.3f} vs "
              f"popularity {hit_pop:.3f} ({hit_model / max(hit_pop, 1e-12):.1f}×)")
        print(f"model store: {model.store_.path}")
        print(f"dashboard: {_dashboard(client)}")
    return 0


def _popularity_hit_rate(train, users, truth, n):
    """Hit rate of recommending the most popular items each user has not seen."""
    popularity = np.asarray(train.sum(axis=0)).ravel()
    order = np.argsort(-popularity, kind="stable")
    hits = 0
    for u, t in zip(users, truth):
        seen = set(train.indices[train.indptr[u] : train.indptr[u + 1]].tolist())
        top = [j for j in order[: n + len(seen)] if j not in seen][:n]
        hits += t in top
    return hits / max(1, len(users))


# ---------------------------------------------------------------------- ingest
def cmd_ingest(args):
    import daskwals

    chunks = tuple(args.chunks) if args.chunks else "auto"
    with _maybe_client(args):
        summary = daskwals.ingest(
            args.source, args.store, user_col=args.user, item_col=args.item,
            rating_col=args.rating, weight_col=args.weight, timestamp_col=args.timestamp,
            chunks=chunks, sep=args.sep, overwrite=args.overwrite,
            sum_duplicates=args.sum_duplicates,
        )
    n, m = summary["shape"]
    print(f"ratings store: {summary['path']}")
    print(f"  {n:,} rows × {m:,} columns, {summary['nnz']:,} stored entries, blocks "
          f"{summary['chunks'][0]:,} × {summary['chunks'][1]:,}, "
          f"{summary['seconds']:.1f} s")
    return 0


def cmd_generate(args):
    import daskwals

    summary = daskwals.write_synthetic(
        args.store, args.users, args.items, args.nnz, rank=args.planted_rank, seed=args.seed,
        chunks=tuple(args.chunks) if args.chunks else "auto", implicit=args.implicit,
        overwrite=args.overwrite,
    )
    n, m = summary["shape"]
    print(f"ratings store: {summary['path']}: {n:,} × {m:,}, {summary['nnz']:,} entries")
    return 0


@contextlib.contextmanager
def _maybe_client(args):
    """A cluster for commands that can run on the threaded scheduler as well."""
    if getattr(args, "threads", False) and not args.scheduler:
        yield None
        return
    with cluster_client(args) as client:
        yield client


# ------------------------------------------------------------------------- fit
def _load_ratings(path):
    import daskwals

    if str(path).endswith(".npz"):
        import scipy.sparse

        return daskwals.as_ratings(scipy.sparse.load_npz(path))
    return daskwals.open_ratings(path)


def cmd_fit(args):
    from tqdm.auto import tqdm

    import daskwals

    ratings = _load_ratings(args.ratings)
    n, m = ratings.shape
    print(f"ratings: {n:,} × {m:,}, blocks {ratings.chunks[0][0]:,} × {ratings.chunks[1][0]:,}")
    with _maybe_client(args) as client:
        if client is not None:
            print(f"dask cluster: {len(client.scheduler_info()['workers'])} workers; "
                  f"dashboard: {_dashboard(client)}")
        bar = tqdm(total=args.iterations, desc="fitting", unit="iter", file=sys.stdout)
        times = []
        last = [time.perf_counter()]

        def on_iteration(model, iteration, loss):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            bar.n = iteration
            bar.refresh()
            bar.write(f"iteration {iteration:3d}: loss {loss:.6g} ({times[-1]:.2f} s)")

        weights = None if args.als else args.alpha
        model = daskwals.WALS(
            args.rank, unobserved_weight=args.unobserved_weight,
            regularization=args.regularization, row_weights=weights,
            col_weights=None if args.als else 1.0, n_iter=args.iterations, seed=args.seed,
            dtype=args.dtype, store=args.store, overwrite=args.overwrite, resume=args.resume,
            use_factors_weights_cache=not args.no_cache, break_lock=args.break_lock,
            callback=on_iteration,
        )
        model.fit(ratings)
        bar.close()
    if times:
        print(f"{len(times)} iterations, {sum(times) / len(times):.2f} s per iteration")
    print(f"model store: {model.store_.path}")
    png = _loss_plot(model.loss_history_, args.store)
    if png:
        print(f"loss curve: {png}")
    return 0


def _loss_plot(history, store):
    """Write the loss curve beside the store as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not history:
        return None
    path = os.path.splitext(os.path.abspath(str(store)).rstrip(os.sep))[0] + "-loss.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(history) + 1), history, marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.set_yscale("log")
    ax.set_title("WALS loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- info
def cmd_info(args):
    from daskwals.store import FactorStore

    store = FactorStore.open(args.store, mode="r")
    meta = store.meta
    n, m = meta["shape"]
    print(f"store:        {store.path}")
    print(f"format:       {meta['format_version']}")
    print(f"shape:        {n:,} rows × {m:,} columns, rank {meta['n_components']}, "
          f"{meta['dtype']}")
    print(f"chunks:       {meta['row_chunk']:,} rows, {meta['col_chunk']:,} columns")
    print(f"sweeps:       {meta['sweeps']} ({meta['iterations']} iterations)")
    for key, value in sorted(meta["params"].items()):
        print(f"  {key}: {value}")
    history = meta["loss_history"]
    if history:
        print(f"loss:         {history[0]:.6g} → {history[-1]:.6g} over {len(history)} iterations")
    return 0


# ---------------------------------------------------------------------- main
def build_parser():
    parser = argparse.ArgumentParser(
        prog="daskwals",
        description="Weighted alternating least squares matrix factorisation on dask.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="fit a generated implicit-feedback matrix on a local cluster",
        description="Generate a planted low-rank implicit-feedback matrix, fit WALS on an "
        "embedded LocalCluster (or a running scheduler), and compare held-out hit rate with "
        "a popularity baseline.",
        epilog=EPILOG_DEMO, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--users", type=int, default=20_000, help="rows (default 20000)")
    demo.add_argument("--items", type=int, default=5_000, help="columns (default 5000)")
    demo.add_argument("--per-user", type=int, default=40,
                      help="mean interactions per user (default 40)")
    demo.add_argument("--planted-rank", type=int, default=16, help="rank of the planted model")
    demo.add_argument("--rank", type=int, default=16, help="n_components (default 16)")
    demo.add_argument("--iterations", type=int, default=10, help="iterations (default 10)")
    demo.add_argument("--alpha", type=float, default=1.0,
                      help="row weight R: extra weight of an interaction (default 1)")
    demo.add_argument("--unobserved-weight", type=float, default=0.1, help="W0 (default 0.1)")
    demo.add_argument("--regularization", type=float, default=0.1, help="λ (default 0.1)")
    demo.add_argument("--eval-users", type=int, default=5_000,
                      help="users sampled for the held-out evaluation")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--store", help="model store path (default ./daskwals-demo.zarr)")
    _add_cluster_options(demo)
    demo.set_defaults(func=cmd_demo)

    ing = sub.add_parser(
        "ingest", help="write CSV or parquet triplets to an on-disk ratings store",
        description="Read (user, item, rating) triplets with arbitrary ids, map the ids to "
        "indices (maps kept) and write both orientations block by block, never loading "
        "the whole input.",
        epilog=EPILOG_INGEST, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ing.add_argument("source", help="CSV path or glob, or parquet file or directory")
    ing.add_argument("store", help="ratings store to create")
    ing.add_argument("--user", default="user", help="user id column (default user)")
    ing.add_argument("--item", default="item", help="item id column (default item)")
    ing.add_argument("--rating", default="rating", help="rating column (default rating)")
    ing.add_argument("--weight", help="per-entry weight column")
    ing.add_argument("--timestamp", help="timestamp column")
    ing.add_argument("--sep", default=",", help="CSV separator (default ,)")
    ing.add_argument("--chunks", type=int, nargs=2, metavar=("ROWS", "COLS"),
                     help="rows and columns per block (default: about 2e6 entries a block)")
    ing.add_argument("--sum-duplicates", action="store_true",
                     help="add up repeated (user, item) pairs instead of refusing them")
    ing.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ing.add_argument("--threads", action="store_true",
                     help="use the threaded scheduler instead of a LocalCluster")
    _add_cluster_options(ing)
    ing.set_defaults(func=cmd_ingest)

    gen = sub.add_parser(
        "generate", help="write a synthetic planted low-rank ratings store of any size",
        epilog=EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("store", help="ratings store to create")
    gen.add_argument("--users", type=int, default=200_000)
    gen.add_argument("--items", type=int, default=50_000)
    gen.add_argument("--nnz", type=int, default=5_000_000, help="expected stored entries")
    gen.add_argument("--planted-rank", type=int, default=16)
    gen.add_argument("--chunks", type=int, nargs=2, metavar=("ROWS", "COLS"))
    gen.add_argument("--implicit", action="store_true", help="binary values (interactions)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=cmd_generate)

    fitp = sub.add_parser(
        "fit", help="fit WALS on a ratings store (or a scipy .npz) into a model store",
        description="Fit on an embedded LocalCluster (or --scheduler), with a loss line per "
        "iteration; every sweep is a checkpoint, so --resume continues an interrupted fit. "
        "Writes a loss-curve PNG beside the model store.",
        epilog=EPILOG_FIT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fitp.add_argument("ratings", help="ratings store (from ingest/generate) or a .npz file")
    fitp.add_argument("store", help="model store to write")
    fitp.add_argument("--rank", type=int, default=32, help="n_components (default 32)")
    fitp.add_argument("--iterations", type=int, default=10, help="iterations (default 10)")
    fitp.add_argument("--regularization", type=float, default=0.1, help="λ (default 0.1)")
    fitp.add_argument("--unobserved-weight", type=float, default=0.1, help="W0 (default 0.1)")
    fitp.add_argument("--alpha", type=float, default=1.0,
                      help="row weight R of stored entries (default 1)")
    fitp.add_argument("--als", action="store_true",
                      help="plain ALS: no row/column weights (W = W0 everywhere)")
    fitp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    fitp.add_argument("--seed", type=int, default=0)
    fitp.add_argument("--no-cache", action="store_true",
                      help="stream factor chunks from zarr (use_factors_weights_cache=False)")
    fitp.add_argument("--resume", action="store_true",
                      help="continue the model in STORE from its last completed sweep")
    fitp.add_argument("--overwrite", action="store_true", help="replace an existing model")
    fitp.add_argument("--break-lock", action="store_true",
                      help="take over the store's writer lock (only if its writer is gone)")
    fitp.add_argument("--threads", action="store_true",
                      help="use the threaded scheduler instead of a LocalCluster")
    _add_cluster_options(fitp)
    fitp.set_defaults(func=cmd_fit)

    info = sub.add_parser("info", help="describe a model store",
                          epilog=EPILOG_INFO,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("store", help="path or URL of the model store")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    # Our own logger gets the handler; dask's loggers keep their configured levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("daskwals")
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    if args.verbose >= 2:
        logging.basicConfig(level=logging.INFO)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, StoreLockedError) as exc:
        print(f"daskwals {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
