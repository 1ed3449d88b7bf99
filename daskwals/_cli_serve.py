"""Commands that serve and evaluate fitted models: ``recommend``, ``evaluate``, ``split``."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys

import numpy as np

from ._cli_common import _load_ratings


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
