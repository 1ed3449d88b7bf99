"""Cluster handling and ratings loading shared by the ``daskwals`` commands."""

from __future__ import annotations

import contextlib
import logging


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


def _load_ratings(path):
    import daskwals

    if str(path).endswith(".npz"):
        import scipy.sparse

        return daskwals.as_ratings(scipy.sparse.load_npz(path))
    return daskwals.open_ratings(path)
