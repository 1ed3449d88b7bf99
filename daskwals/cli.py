"""The ``daskwals`` command line."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
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

EPILOG_RECOMMEND = """examples:
  daskwals recommend model.zarr --users 1 42 --ratings ratings.zarr
  daskwals recommend model.zarr --users alice bob --no-filter -n 5 --format json
  daskwals recommend model.zarr --users-file users.txt --ratings ratings.zarr --format csv > recs.csv
  daskwals recommend model.zarr --users 1 --ratings ratings.zarr --items-file candidates.txt
  daskwals recommend model.zarr --similar-items 318 2571 -n 5

Users and items are the original ids of the ratings the model was fitted on (indices for
a model fitted on a .npz or a generated store). --ratings filters out each user's stored
entries: pass the ratings the model was fitted on (its train split).
"""

EPILOG_EVALUATE = """examples:
  daskwals split ratings.zarr train.zarr test.zarr --method random --fraction 0.2
  daskwals fit train.zarr model.zarr --rank 32 --threads
  daskwals evaluate model.zarr --test test.zarr                    # RMSE and MAE
  daskwals evaluate model.zarr --test test.zarr --train train.zarr --k 10
  daskwals evaluate model.zarr --test test.zarr --train train.zarr --ranking --format json

A test (or train) store whose ids differ from the model's (a split writes only the ids
present in each half) is mapped onto the model's ids in memory; entries of users or
items the model does not know are left out and counted. A .npz must have the model's
shape. Ranking metrics (P@K, R@K, MAP@K, NDCG@K, AUC) need --train, the ratings the
model was fitted on: their items are never recommended and are not negatives for AUC.
"""

EPILOG_SPLIT = """examples:
  daskwals split ratings.zarr train.zarr test.zarr --method random --fraction 0.2 --seed 0
  daskwals split ratings.zarr train.zarr test.zarr --method leave-one-out
  daskwals split ratings.zarr train.zarr test.zarr --method leave-one-out --k 5

Each half is written with daskwals.ingest, block by block, with the original ids; a
user or item without entries in a half is not in that half's store (evaluate maps ids).
Only the rating values are copied: per-entry weights and timestamps are not.
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


# ------------------------------------------------------------ shared: serving helpers
@contextlib.contextmanager
def _joined(args):
    """Join ``--scheduler`` when given; otherwise run on dask's threaded scheduler."""
    if not args.scheduler:
        yield None
        return
    from distributed import Client

    with Client(args.scheduler) as client:
        yield client


class _TaskBar:
    """A tqdm bar of the dask tasks run while it is active (local schedulers only).

    A dask.distributed client runs tasks elsewhere, where these callbacks never fire;
    the bar then stays empty and is removed on exit.
    """

    def __init__(self, desc):
        from dask.callbacks import Callback
        from tqdm.auto import tqdm

        self.bar = tqdm(total=0, desc=desc, unit="task", file=sys.stderr, leave=False)
        bar = self.bar

        class _Callback(Callback):
            def _start_state(self, dsk, state):
                bar.total += len(state["ready"]) + len(state["waiting"])
                bar.refresh()

            def _posttask(self, key, result, dsk, state, worker_id):
                bar.update(1)

        self.callback = _Callback()

    def __enter__(self):
        self.callback.__enter__()
        return self

    def __exit__(self, *exc):
        self.callback.__exit__(*exc)
        self.bar.close()


def _read_id_file(path):
    """Ids from a text file, one per line; blank lines and ``#`` comments are skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def _parse_ids(tokens, ids, what, option):
    """Command-line tokens as the model's ids: strings, integers, or indices (no ids)."""
    if ids is not None and ids.dtype == object:
        return np.asarray(list(tokens), dtype=object)
    try:
        return np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        kind = "indices (the model has no id map)" if ids is None else "integer ids"
        raise ValueError(f"{option}: the model's {what}s are {kind}; got {bad!r}") from None


def _same_ids(a, b):
    return a is not None and b is not None and len(a) == len(b) and bool(np.all(a == b))


def _id_positions(ids, values, what):
    """Position of each of ``values`` among the model's ``ids``; -1 where unknown."""
    try:
        if ids.dtype == object:
            values = np.asarray(values).astype(str).astype(object)
        else:
            values = np.asarray(values).astype(ids.dtype)
    except (TypeError, ValueError):
        raise ValueError(
            f"the {what} ids of the ratings ({np.asarray(values).dtype}) cannot be compared "
            f"with the model's ({ids.dtype}); use ratings ingested with the same id columns"
        ) from None
    order = np.argsort(ids, kind="stable")
    ranked = ids[order]
    pos = np.clip(np.searchsorted(ranked, values), 0, len(ids) - 1)
    return np.where(ranked[pos] == values, order[pos], -1)


def _triplets(ratings):
    """(row, col, value) NumPy arrays of every stored entry of ``ratings`` (in memory)."""
    import dask

    blocks = dask.compute(ratings.rows.to_delayed().tolist())[0]
    row_starts = np.concatenate([[0], np.cumsum(ratings.chunks[0])])
    col_starts = np.concatenate([[0], np.cumsum(ratings.chunks[1])])
    rows, cols, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for i, row_of_blocks in enumerate(blocks):
        for j, block in enumerate(row_of_blocks):
            rows.append(np.asarray(block.coords[0], np.int64) + row_starts[i])
            cols.append(np.asarray(block.coords[1], np.int64) + col_starts[j])
            values.append(np.asarray(block.data, np.float64))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)


def _aligned(model, ratings, option):
    """``ratings`` indexed like ``model``: ``(Ratings, entries left out)``.

    - Ratings with the model's shape and no id map (a .npz), or with the model's id maps
      (the store it was fitted on), are used as they are, lazily.
    - Other ratings are mapped onto the model's ids in memory, leaving out entries of
      users or items the model does not know. A store without id maps (from
      ``generate``) has its indices as ids, as ``split`` writes them.
    """
    import daskwals

    store = model.store_
    shape = (store.length("row"), store.length("col"))
    given = ratings.row_ids is not None
    if (not given and tuple(ratings.shape) == shape) or (
        _same_ids(model.row_ids_, ratings.row_ids) and _same_ids(model.col_ids_, ratings.col_ids)
    ):
        return ratings, 0
    if model.row_ids_ is None or (not given and model.row_ids_.dtype == object):
        raise ValueError(
            f"{option} has shape {tuple(ratings.shape)} but the model scores a {shape[0]} × "
            f"{shape[1]} matrix, and their rows and columns cannot be matched by id; pass "
            "ratings with the model's shape, or ingested with the same id columns"
        )
    n, m = ratings.shape
    row_ids = ratings.row_ids if given else np.arange(n)
    col_ids = ratings.col_ids if ratings.col_ids is not None else np.arange(m)
    row, col, values = _triplets(ratings)
    row = _id_positions(model.row_ids_, row_ids, "user")[row]
    col = _id_positions(model.col_ids_, col_ids, "item")[col]
    keep = (row >= 0) & (col >= 0)
    if values.size and not keep.any():
        raise ValueError(f"no entry of {option} has a user and an item the model knows; "
                         "pass ratings with the model's ids")
    aligned = daskwals.Ratings.from_coo(
        row[keep], col[keep], values[keep], shape,
        chunks=(store.chunk("row"), store.chunk("col")),
        row_ids=model.row_ids_, col_ids=model.col_ids_,
    )
    return aligned, int(keep.size - keep.sum())


def _plain(value):
    """A NumPy scalar as the Python value JSON and csv write."""
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------ recommend
def cmd_recommend(args):
    import daskwals

    with _joined(args):
        model = daskwals.open(args.store)
        if args.similar_items:
            queries = _parse_ids(args.similar_items, model.col_ids_, "item", "--similar-items")
            ids, scores = model.similar_items(queries, N=args.n)
            _print_results("item", queries, ids, scores, args.format)
            return 0
        tokens = list(args.users or []) + (_read_id_file(args.users_file)
                                           if args.users_file else [])
        if not tokens:
            raise ValueError("give users with --users U1 U2 ... or --users-file FILE, or "
                             "items with --similar-items I1 I2 ...")
        users = _parse_ids(tokens, model.row_ids_, "user", "--users")
        items = exclude = None
        if args.items_file:
            items = _parse_ids(_read_id_file(args.items_file), model.col_ids_, "item",
                               "--items-file")
        if args.exclude_file:
            exclude = _parse_ids(_read_id_file(args.exclude_file), model.col_ids_, "item",
                                 "--exclude-file")
        if not args.no_filter:
            if args.ratings is None:
                raise ValueError(
                    "leaving out the items each user already rated needs the ratings the "
                    "model was fitted on: pass --ratings RATINGS_STORE, or --no-filter to "
                    "recommend them too"
                )
            liked, dropped = _aligned(model, _load_ratings(args.ratings), "--ratings")
            if dropped:
                print(f"--ratings: {dropped:,} entries of users or items unknown to the "
                      "model left out", file=sys.stderr)
            model = daskwals.open(args.store, ratings=liked)
        ids, scores = _recommend_batches(model, users, args, items, exclude)
    _print_results("user", users, ids, scores, args.format)
    return 0


def _recommend_batches(model, users, args, items, exclude):
    from tqdm.auto import tqdm

    ids, scores = [], []
    batches = range(0, users.size, args.batch_size)
    with tqdm(total=users.size, desc="recommending", unit="user", file=sys.stderr,
              leave=False, disable=len(batches) < 2) as bar:
        for start in batches:
            batch = users[start : start + args.batch_size]
            part = model.recommend(batch, N=args.n, filter_already_liked=not args.no_filter,
                                   filter_items=exclude, items=items,
                                   batch_size=args.batch_size)
            ids.append(part[0])
            scores.append(part[1])
            bar.update(batch.size)
    return np.concatenate(ids), np.concatenate(scores)


def _result_rows(kind, queries, ids, scores):
    """(query, rank, id, score) of every filled slot, best first per query."""
    for query, row_ids, row_scores in zip(queries, ids, scores):
        rank = 0
        for item, score in zip(row_ids, row_scores):
            if item is None or (not isinstance(item, str) and item == -1) or not np.isfinite(
                score
            ):
                continue  # an empty slot: fewer than N items were left to recommend
            rank += 1
            yield _plain(query), rank, _plain(item), float(score)


def _print_results(kind, queries, ids, scores, fmt):
    rows = list(_result_rows(kind, queries, ids, scores))
    other = "item" if kind == "user" else "similar_item"
    if fmt == "json":
        grouped = {_plain(q): {kind: _plain(q), f"{other}s": [], "scores": []} for q in queries}
        for query, _, item, score in rows:
            grouped[query][f"{other}s"].append(item)
            grouped[query]["scores"].append(score)
        result = [grouped[_plain(q)] for q in queries]
        print(json.dumps(result, indent=1))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([kind, "rank", other, "score"])
        writer.writerows([q, r, i, f"{s:.6g}"] for q, r, i, s in rows)
    else:
        table = [[str(q), str(r), str(i), f"{s:.4f}"] for q, r, i, s in rows]
        _print_table([kind, "rank", other, "score"], table)


def _print_table(header, table):
    widths = [max([len(h)] + [len(row[c]) for row in table]) for c, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in table:
        print("  ".join(v.rjust(w) if c else v.ljust(w)
                        for c, (v, w) in enumerate(zip(row, widths))).rstrip())


# ------------------------------------------------------------------- evaluate
def cmd_evaluate(args):
    import daskwals

    want_rmse = args.rmse or not args.ranking
    want_ranking = args.ranking or (args.train is not None and not args.rmse)
    if want_ranking and args.train is None:
        raise ValueError(
            "--ranking needs --train TRAIN_RATINGS, the ratings the model was fitted on: "
            "their items are left out of the recommendations and of AUC's negatives"
        )
    with _joined(args):
        model = daskwals.open(args.store)
        test, dropped = _aligned(model, _load_ratings(args.test), "--test")
        report = {"model": model.store_.path, "test": os.fspath(args.test),
                  "test_entries": int(test.nnz), "test_entries_left_out": dropped}
        if want_rmse:
            with _TaskBar("RMSE and MAE"):
                report["rmse"] = daskwals.metrics.rmse(model, test)
                report["mae"] = daskwals.metrics.mae(model, test)
        if want_ranking:
            train, _ = _aligned(model, _load_ratings(args.train), "--train")
            model = daskwals.open(args.store, ratings=train)
            report.update(_ranking(model, train, test, args))
    _print_report(report, args.format)
    return 0


def _row_nnz_block(block):
    return np.bincount(np.asarray(block.coords[0], np.int64), minlength=block.shape[0])[:, None]


def _rows_with_entries(ratings):
    counts = ratings.rows.map_blocks(
        _row_nnz_block, dtype=np.int64, chunks=(ratings.chunks[0], (1,) * len(ratings.chunks[1])),
        meta=np.empty((0, 0), np.int64),
    )
    return np.flatnonzero(counts.sum(axis=1).compute() > 0)


def _ranking(model, train, test, args):
    """Ranking metrics at K over the test users, a batch of users at a time.

    Per batch: the model's top K (its fitted ratings left out), mapped back to item
    indices, scored by the ``daskwals.metrics`` functions against the batch's test rows,
    and AUC on the batch. Batch means are weighted by their users: exact for P@K, R@K,
    MAP@K and NDCG@K (every user here has a test entry), and for AUC as long as every
    user has an item outside train and test (one who touched every item has no AUC).
    """
    from tqdm.auto import tqdm

    from daskwals import metrics
    from daskwals.recommend import rows_csr

    users = _rows_with_entries(test)
    if args.max_users and users.size > args.max_users:
        rng = np.random.default_rng(args.seed)
        users = np.sort(rng.choice(users, args.max_users, replace=False))
    if users.size == 0:
        raise ValueError("--test has no entries of users the model knows; nothing to rank")
    functions = {"precision": metrics.precision_at_k, "recall": metrics.recall_at_k,
                 "map": metrics.map_at_k, "ndcg": metrics.ndcg_at_k}
    sums = dict.fromkeys([*functions, "auc"], 0.0)
    with tqdm(total=users.size, desc="ranking", unit="user", file=sys.stderr,
              leave=False) as bar:
        for start in range(0, users.size, args.batch_size):
            batch = users[start : start + args.batch_size]
            labels = batch if model.row_ids_ is None else model.row_ids_[batch]
            ids, scores = model.recommend(labels, N=args.k, filter_already_liked=True,
                                          batch_size=args.batch_size)
            top = np.full(ids.shape, -1, np.int64)  # item indices; -1: an empty slot
            filled = np.isfinite(scores)
            top[filled] = ids[filled] if model.col_ids_ is None else _id_positions(
                model.col_ids_, ids[filled], "item")
            relevant = rows_csr(test, batch)  # row r: the test items of batch[r]
            for name, function in functions.items():
                sums[name] += function(top, relevant, args.k) * batch.size
            sums["auc"] += metrics.auc(model, train, test, batch,
                                       batch_size=args.batch_size) * batch.size
            bar.update(batch.size)
    return {"k": args.k, "ranked_users": int(users.size),
            **{name: total / users.size for name, total in sums.items()}}


def _print_report(report, fmt):
    if fmt == "json":
        print(json.dumps(report, indent=1))
        return
    print(f"model: {report['model']}")
    print(f"test:  {report['test']}: {report['test_entries']:,} entries"
          + (f" ({report['test_entries_left_out']:,} of unknown users or items left out)"
             if report["test_entries_left_out"] else ""))
    if "rmse" in report:
        print(f"RMSE     {report['rmse']:.4f}")
        print(f"MAE      {report['mae']:.4f}")
    if "k" in report:
        k = report["k"]
        print(f"ranking over {report['ranked_users']:,} users with held-out items:")
        for name, label in (("precision", "P"), ("recall", "R"), ("map", "MAP"),
                            ("ndcg", "NDCG")):
            print(f"{label}@{k}".ljust(9) + f"{report[name]:.4f}")
        print(f"AUC      {report['auc']:.4f}")


# ---------------------------------------------------------------------- split
def cmd_split(args):
    import daskwals

    ratings = daskwals.open_ratings(args.ratings)
    if args.method == "random":
        fraction = 0.2 if args.fraction is None else args.fraction
        train, test = daskwals.splits.random_split(ratings, fraction, args.seed)
        how = f"random, {fraction:g} held out, seed {args.seed}"
    else:
        if args.fraction is not None:
            raise ValueError("--fraction applies to --method random; leave-one-out holds out "
                             "--k entries per user")
        least = args.k + 1 if args.min_interactions is None else args.min_interactions
        train, test = daskwals.splits.leave_k_out(ratings, k=args.k, seed=args.seed,
                                                  min_interactions=least)
        how = (f"leave-{args.k}-out of users with at least {least} entries, "
               f"seed {args.seed}")
    n, m = ratings.shape
    print(f"ratings: {os.path.abspath(args.ratings)}: {n:,} × {m:,}, "
          f"{ratings.nnz:,} entries; split {how}")
    chunks = (ratings.chunks[0][0], ratings.chunks[1][0])
    with _joined(args):
        for name, half, path in (("train", train, args.train), ("test", test, args.test)):
            with _TaskBar(f"writing {name}"):
                summary = daskwals.ingest(
                    _entries_frame(half), path, user_col="user", item_col="item",
                    rating_col="rating", chunks=chunks, overwrite=args.overwrite,
                )
            rows, cols = summary["shape"]
            print(f"{name}: {summary['path']}: {rows:,} × {cols:,}, {summary['nnz']:,} "
                  f"entries")
    return 0


def _entries_frame(ratings):
    """A dask DataFrame (user, item, rating) of ``ratings``, one partition per row block.

    Ids are the ratings' original ids (their indices when they have none), so the halves
    of a split keep the ids of the store they came from.
    """
    import dask
    import dask.dataframe as dd

    n, m = ratings.shape
    row_ids = np.arange(n) if ratings.row_ids is None else np.asarray(ratings.row_ids)
    col_ids = np.arange(m) if ratings.col_ids is None else np.asarray(ratings.col_ids)
    col_starts = np.concatenate([[0], np.cumsum(ratings.chunks[1])[:-1]])
    row_starts = np.concatenate([[0], np.cumsum(ratings.chunks[0])[:-1]])
    users, items = dask.delayed(row_ids), dask.delayed(col_ids)  # one key each
    blocks = ratings.rows.to_delayed()
    parts = [
        dask.delayed(_block_entries)(list(blocks[i]), int(row_starts[i]), col_starts, users,
                                     items)
        for i in range(blocks.shape[0])
    ]
    meta = _frame(row_ids[:0], col_ids[:0], np.zeros(0))
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _block_entries(blocks, row_start, col_starts, row_ids, col_ids):
    """Task: the entries of one row block (all its column blocks) as a pandas frame."""
    rows, cols, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for block, start in zip(blocks, col_starts):
        rows.append(np.asarray(block.coords[0], np.int64) + row_start)
        cols.append(np.asarray(block.coords[1], np.int64) + start)
        values.append(np.asarray(block.data, np.float64))
    return _frame(row_ids[np.concatenate(rows)], col_ids[np.concatenate(cols)],
                  np.concatenate(values))


def _frame(users, items, values):
    import pandas as pd

    return pd.DataFrame({"user": users, "item": items, "rating": values})


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

    rec = sub.add_parser(
        "recommend", help="top-N items for users, or items similar to items, from a model",
        description="Serve a fitted model store: the best N items for each user (by u·v, "
        "leaving out the items each user already rated unless --no-filter), or with "
        "--similar-items the N most similar items (cosine of item factors). Prints original "
        "ids and scores.",
        epilog=EPILOG_RECOMMEND, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument("store", help="model store (from fit)")
    query = rec.add_mutually_exclusive_group()
    query.add_argument("--users", nargs="+", metavar="USER", help="users to recommend for")
    query.add_argument("--similar-items", nargs="+", metavar="ITEM",
                       help="instead: items to find similar items for")
    rec.add_argument("--users-file", metavar="FILE",
                     help="more users, one id per line")
    rec.add_argument("-n", "--n", type=int, default=10, help="items per user (default 10)")
    rec.add_argument("--ratings", metavar="RATINGS",
                     help="the ratings the model was fitted on (store or .npz), to leave out "
                     "each user's rated items")
    rec.add_argument("--no-filter", action="store_true",
                     help="recommend items the user already rated too")
    rec.add_argument("--items-file", metavar="FILE",
                     help="recommend only among these items (one id per line)")
    rec.add_argument("--exclude-file", metavar="FILE",
                     help="never recommend these items (one id per line)")
    rec.add_argument("--format", choices=["table", "csv", "json"], default="table",
                     help="output format (default table)")
    rec.add_argument("--batch-size", type=_positive, default=2048,
                     help="users scored per batch (default 2048)")
    _add_scheduler_option(rec)
    rec.set_defaults(func=cmd_recommend)

    ev = sub.add_parser(
        "evaluate", help="RMSE/MAE and ranking metrics of a model on held-out ratings",
        description="Score a fitted model store on held-out ratings: RMSE and MAE of u·v on "
        "the test entries; with --train, also P@K, R@K, MAP@K, NDCG@K and AUC of its top-K "
        "recommendations (binary relevance: every test entry of a user is relevant).",
        epilog=EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("store", help="model store (from fit)")
    ev.add_argument("--test", required=True, metavar="TEST",
                    help="held-out ratings: a ratings store or a .npz file")
    ev.add_argument("--train", metavar="TRAIN",
                    help="the ratings the model was fitted on (store or .npz); needed for "
                    "ranking metrics")
    ev.add_argument("--k", type=_positive, default=10, help="K of the ranking metrics (default 10)")
    ev.add_argument("--rmse", action="store_true", help="only RMSE and MAE")
    ev.add_argument("--ranking", action="store_true",
                    help="only ranking metrics (default with --train: both)")
    ev.add_argument("--max-users", type=_positive,
                    help="rank a random sample of this many test users (default all)")
    ev.add_argument("--seed", type=int, default=0, help="seed of --max-users' sample")
    ev.add_argument("--batch-size", type=_positive, default=1024,
                    help="users ranked per batch (default 1024)")
    ev.add_argument("--format", choices=["table", "json"], default="table",
                    help="output format (default table)")
    _add_scheduler_option(ev)
    ev.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser(
        "split", help="split a ratings store into train and test stores",
        description="Hold out entries of a ratings store (daskwals.splits: random_split or "
        "leave_k_out; decided per entry by a seeded hash, so independent of the chunking) "
        "and write the two halves as ratings stores with the original ids.",
        epilog=EPILOG_SPLIT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("ratings", help="ratings store to split")
    sp.add_argument("train", help="train store to create")
    sp.add_argument("test", help="test store to create")
    sp.add_argument("--method", choices=["random", "leave-one-out"], default="random",
                    help="random: each entry held out with probability --fraction; "
                    "leave-one-out: --k entries of every user (default random)")
    sp.add_argument("--fraction", type=float,
                    help="held-out probability of --method random (default 0.2)")
    sp.add_argument("--k", type=_positive, default=1,
                    help="entries held out per user by leave-one-out (default 1)")
    sp.add_argument("--min-interactions", type=_positive,
                    help="leave-one-out splits only users with at least this many entries "
                    "(default k + 1, so every user keeps a training entry)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true", help="replace existing stores")
    _add_scheduler_option(sp)
    sp.set_defaults(func=cmd_split)
    return parser


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _add_scheduler_option(parser):
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="join a running dask scheduler (default: this process's threads)")


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
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, StoreLockedError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"daskwals {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
