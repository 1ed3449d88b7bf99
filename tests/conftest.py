from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
import scipy.sparse


def random_ratings(n, m, density, seed, *, empty_rows=(), empty_cols=(), zeros=0):
    """A random sparse matrix with some empty rows/columns and explicitly stored zeros."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < density
    mask[list(empty_rows), :] = False
    mask[:, list(empty_cols)] = False
    row, col = np.nonzero(mask)
    values = rng.integers(1, 6, size=row.size).astype(float)
    if zeros:
        values[rng.choice(row.size, size=min(zeros, row.size), replace=False)] = 0.0
    return scipy.sparse.csr_matrix((values, (row, col)), shape=(n, m))


def dense_and_mask(csr):
    """(A, mask) where mask marks stored entries, stored zeros included."""
    coo = csr.tocoo()
    mask = np.zeros(csr.shape, dtype=bool)
    mask[coo.row, coo.col] = True
    return csr.toarray(), mask


@pytest.fixture
def small():
    """30 × 20 with empty rows 3, 17 and empty column 5, two stored zeros."""
    return random_ratings(30, 20, 0.3, seed=1, empty_rows=(3, 17), empty_cols=(5,), zeros=2)


@pytest.fixture(scope="session")
def local_cluster():
    """A real LocalCluster with two single-threaded worker processes."""
    distributed = pytest.importorskip("distributed")
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.CRITICAL, env={"NUMBA_NUM_THREADS": "1"},
        )
    yield cluster
    cluster.close()


@pytest.fixture
def client(local_cluster):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(local_cluster) as c:
        yield c
