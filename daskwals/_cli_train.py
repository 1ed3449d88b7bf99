"""Commands that build and fit models: ``demo``, ``ingest``, ``generate``, ``fit``, ``info``."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from ._cli_common import _dashboard, _load_ratings, cluster_client


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
