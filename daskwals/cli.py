"""The ``daskwals`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from ._cli_common import _add_cluster_options
from ._cli_serve import cmd_evaluate, cmd_recommend, cmd_split
from ._cli_train import cmd_demo, cmd_fit, cmd_generate, cmd_info, cmd_ingest
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
