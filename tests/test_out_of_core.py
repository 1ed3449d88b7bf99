"""Streaming factors (no task holds a whole factor), bounded-memory clusters, and resume."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest

from daskwals import WALS, FactorStore

from .conftest import random_ratings


def fit(X, **kw):
    params = dict(n_iter=3, dtype="float64", seed=0, regularization=0.1, chunks=(9, 7))
    params.update(kw)
    return WALS(4, **params).fit(X)


@pytest.mark.parametrize("weights", [1.0, None])
def test_streaming_equals_cached(weights):
    X = random_ratings(40, 30, 0.2, seed=3, empty_rows=(2,), empty_cols=(4,))
    a = fit(X, use_factors_weights_cache=True, row_weights=weights, col_weights=weights)
    b = fit(X, use_factors_weights_cache=False, row_weights=weights, col_weights=weights)
    np.testing.assert_array_equal(np.asarray(a.row_factors_), np.asarray(b.row_factors_))
    np.testing.assert_array_equal(np.asarray(a.col_factors_), np.asarray(b.col_factors_))
    assert a.loss_history_ == b.loss_history_


@pytest.mark.parametrize("cache", [True, False])
def test_factor_chunks_read_once_per_sweep_and_streaming_tasks_get_one_chunk(monkeypatch, cache):
    from daskwals import _graph

    X = random_ratings(40, 30, 0.2, seed=3)
    model = fit(X, n_iter=1)
    store = model.store_
    factor_rows = []
    whole_factor_calls = []
    original_gather = _graph._gather_task

    def gather(block, factor, fixed_weights, entry_weights=None):
        factor_rows.append(factor.shape[0])
        return original_gather(block, factor, fixed_weights, entry_weights)

    monkeypatch.setattr(_graph, "_gather_task", gather)
    monkeypatch.setattr(_graph, "_gather_solve_task",
                        lambda *a: _cached(a, gather, whole_factor_calls))
    sweep = _graph.build_sweep(store, model.ratings_, "row", unobserved_weight=0.1,
                               regularization=0.1, fixed_gram=store.gramian("col"),
                               cache_factors=cache)
    reads = []

    def pretask(key, dsk, state):
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("from-zarr"):
            reads.append(key)

    with dask.config.set(scheduler="sync"), dask.callbacks.Callback(pretask=pretask):
        dask.compute(sweep)
    n_col_blocks = len(model.ratings_.chunks[1])
    n_row_blocks = len(model.ratings_.chunks[0])
    # V's and C's chunks once each for the whole sweep (not once per row block), and R's
    assert len(reads) == 2 * n_col_blocks + n_row_blocks
    assert len(set(reads)) == len(reads)
    if cache:
        assert len(whole_factor_calls) == n_row_blocks
    else:
        assert whole_factor_calls == []
        n_groups = len(_graph.column_groups(model.ratings_.chunks[1], 4))
        assert 1 < n_groups < n_col_blocks
        assert len(factor_rows) == n_row_blocks * n_groups
        assert max(factor_rows) < X.shape[1]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("group_bytes, min_groups", [(1, 4), (2**40, 1), (2**40, 2), (4096, 4)])
def test_every_gather_grouping_gives_the_same_factors(monkeypatch, cache, group_bytes,
                                                      min_groups):
    """One block per group, one group for everything, and between: the same numbers."""
    from daskwals import _graph

    X = random_ratings(40, 30, 0.2, seed=3, empty_rows=(2,), empty_cols=(4,))
    reference = fit(X)
    monkeypatch.setattr(_graph, "GROUP_BYTES", group_bytes)
    monkeypatch.setattr(_graph, "MIN_GROUPS", min_groups)
    model = fit(X, use_factors_weights_cache=cache)
    for attr in ("row_factors_", "col_factors_"):
        np.testing.assert_allclose(np.asarray(getattr(model, attr)),
                                   np.asarray(getattr(reference, attr)), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(model.loss_history_, reference.loss_history_, rtol=1e-12)


def test_column_groups():
    from daskwals._graph import column_groups

    assert column_groups((7,) * 5, 4) == [(0, 2), (2, 4), (4, 5)]  # at least 4 groups' worth
    assert column_groups((7,) * 5, 4, blocks_per_group=5) == [(0, 5)]
    assert column_groups((7,), 4) == [(0, 1)]
    # 2**20 columns at rank 64 are 512 MiB of float64: groups of at most 32 MiB
    groups = column_groups((2**14,) * 64, 64)
    assert len(groups) == 16 and all(j1 - j0 == 4 for j0, j1 in groups)
    with pytest.raises(ValueError, match="blocks_per_group"):
        column_groups((7,) * 5, 4, blocks_per_group=0)


def _cached(args, gather, calls):
    from daskwals import _graph

    calls.append(1)
    blocks, factors, fixed_weights, entry_weights, *rest = args
    assert len(factors) == len(blocks)
    pieces = [gather(b, f, fw, ew)
              for b, f, fw, ew in zip(blocks, factors, fixed_weights, entry_weights)]
    return _graph._solve_task(pieces, *rest)


def test_cluster_with_small_memory_limit_streams_without_restarts(tmp_path):
    """Worker processes under a tight memory limit complete a streaming fit, no restarts."""
    distributed = pytest.importorskip("distributed")
    X = random_ratings(4000, 3000, 0.02, seed=5)
    kwargs = dict(n_iter=2, seed=0, regularization=0.1, chunks=(500, 500), dtype="float64")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit="400MiB", dashboard_address=":0",
                                  env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as client:
        before = set(client.scheduler_info()["workers"])
        model = WALS(8, use_factors_weights_cache=False, store=tmp_path / "m.zarr",
                     **kwargs).fit(X)
        after = set(client.scheduler_info()["workers"])
        U = np.asarray(model.row_factors_)
    assert before == after  # the same two workers: none was restarted
    with dask.config.set(scheduler="threads"):
        local = WALS(8, **kwargs).fit(X)
    np.testing.assert_allclose(U, np.asarray(local.row_factors_), rtol=1e-10, atol=1e-12)


KILL_SCRIPT = """
import os, signal, sys
import dask
import numpy as np
import scipy.sparse
from daskwals import WALS

X = scipy.sparse.load_npz(sys.argv[1])
count = [0]
def pretask(key, dsk, state):
    name = key[0] if isinstance(key, tuple) else key
    if str(name).startswith("_solve_task") or str(name).startswith("_gather_solve_task"):
        count[0] += 1
        if count[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
with dask.config.set(scheduler="threads", num_workers=1):
    with dask.callbacks.Callback(pretask=pretask):
        WALS(4, n_iter=4, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7),
             store=sys.argv[2]).fit(X)
"""


@pytest.mark.parametrize("kill_at", [13, 20])
def test_resume_after_kill_gives_the_uninterrupted_model(tmp_path, kill_at):
    import scipy.sparse

    X = random_ratings(40, 30, 0.2, seed=3)
    scipy.sparse.save_npz(tmp_path / "x.npz", X)
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    store = tmp_path / "m.zarr"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "x.npz"), str(store),
                          str(kill_at)], capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr  # killed mid-sweep
    sweeps = FactorStore.open(store).meta["sweeps"]
    assert 0 < sweeps < 8
    resumed = WALS(4, n_iter=4, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7),
                   store=store, resume=True).fit(X)
    whole = WALS(4, n_iter=4, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7)).fit(X)
    np.testing.assert_array_equal(np.asarray(resumed.row_factors_), np.asarray(whole.row_factors_))
    np.testing.assert_array_equal(np.asarray(resumed.col_factors_), np.asarray(whole.col_factors_))
    assert resumed.loss_history_ == whole.loss_history_
    assert FactorStore.open(store).meta["sweeps"] == 8


def test_resume_refuses_a_different_model(tmp_path):
    X = random_ratings(40, 30, 0.2, seed=3)
    fit(X, store=tmp_path / "m.zarr", n_iter=1)
    with pytest.raises(ValueError, match=r"cannot resume.*regularization: store has 0.1"):
        fit(X, store=tmp_path / "m.zarr", resume=True, regularization=0.5)
    with pytest.raises(ValueError, match=r"row_chunk"):
        fit(X, store=tmp_path / "m.zarr", resume=True, chunks=(10, 7))
    done = fit(X, store=tmp_path / "m.zarr", resume=True, n_iter=2)
    assert done.n_iter_ == 2 and len(done.loss_history_) == 2
