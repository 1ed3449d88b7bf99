"""FactorStore: create, open, versioned commits, and what an interrupted sweep leaves."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from daskwals import FactorStore
from daskwals.store import FORMAT_VERSION


def make(path, **kw):
    params = dict(row_chunk=4, col_chunk=3, dtype="float64", params={"regularization": 0.1})
    params.update(kw)
    return FactorStore.create(path, (10, 7), 2, **params)


def write_factor(store, axis, value):
    name, arr = store.new_factor(axis)
    arr[...] = value
    x = np.asarray(arr[...])
    return axis, name, x.T @ x


def test_create_open_and_read(tmp_path):
    store = make(tmp_path / "m.zarr")
    meta = FactorStore.open(tmp_path / "m.zarr", mode="r").meta
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["shape"] == [10, 7] and meta["n_components"] == 2
    assert meta["row_chunk"] == 4 and meta["params"] == {"regularization": 0.1}
    assert not store.has("row")
    with pytest.raises(RuntimeError, match="no row factors yet"):
        store.factor("row")
    store.commit([write_factor(store, "row", 1.0), write_factor(store, "col", 2.0)])
    reopened = FactorStore.open(str(tmp_path / "m.zarr"))
    assert reopened.factor("row").chunks == ((4, 4, 2), (2,))
    np.testing.assert_array_equal(np.asarray(reopened.factor("col")), 2.0)
    np.testing.assert_allclose(reopened.gramian("row"), np.full((2, 2), 10.0))
    assert reopened.meta["sweeps"] == 0


def test_commit_switches_versions_and_cleans_up(tmp_path):
    store = make(tmp_path / "m.zarr")
    store.commit([write_factor(store, "row", 1.0)])
    first = store.meta["current"]["row_factors"]
    update = write_factor(store, "row", 3.0)
    # written but not committed: readers still see the old version
    np.testing.assert_array_equal(np.asarray(store.factor("row")), 1.0)
    store.commit([update], sweeps=1, loss=12.5)
    meta = store.meta
    assert meta["current"]["row_factors"] != first
    assert meta["sweeps"] == 1 and meta["loss_history"] == [12.5] and meta["iterations"] == 1
    np.testing.assert_array_equal(np.asarray(store.factor("row")), 3.0)
    assert list(store.group["row_factors"].array_keys()) == [update[1].split("/")[1]]


def test_interrupted_sweep_leaves_previous_model(tmp_path):
    """Half a sweep's chunks written, then a crash: the current model is untouched."""
    store = make(tmp_path / "m.zarr")
    store.commit([write_factor(store, "row", 1.0)])
    name, arr = store.new_factor("row")
    arr[0:4] = 9.0  # one chunk of the new version written before the "crash"
    reopened = FactorStore.open(tmp_path / "m.zarr")
    np.testing.assert_array_equal(np.asarray(reopened.factor("row")), 1.0)
    # the next complete sweep removes the partial version
    reopened.commit([write_factor(reopened, "row", 5.0)], sweeps=1)
    assert name.split("/")[1] not in list(reopened.group["row_factors"].array_keys())


def test_weights_round_trip_and_als(tmp_path):
    store = make(tmp_path / "m.zarr")
    store.write_weights("row", np.arange(10.0))
    np.testing.assert_array_equal(np.asarray(store.weights("row")), np.arange(10.0))
    assert store.weights("row").chunks == ((4, 4, 2),)
    assert store.weights("col") is None
    store.write_weights("row", None)
    assert store.weights("row") is None


def test_refusals(tmp_path):
    make(tmp_path / "m.zarr")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make(tmp_path / "m.zarr")
    make(tmp_path / "m.zarr", overwrite=True)
    with pytest.raises(FileNotFoundError, match="no daskwals model"):
        FactorStore.open(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(FileNotFoundError, match="no daskwals model"):
        FactorStore.open(tmp_path / "plain.zarr")
    group = zarr.open_group(tmp_path / "m.zarr", mode="r+")
    meta = dict(group.attrs["daskwals"])
    meta["format_version"] = FORMAT_VERSION + 1
    group.attrs["daskwals"] = meta
    with pytest.raises(ValueError, match="newer than this daskwals supports"):
        FactorStore.open(tmp_path / "m.zarr")
    with pytest.raises(ValueError, match="axis must be 'row' or 'col'"):
        make(tmp_path / "n.zarr").factor("rows")


def test_temporary_store_outlives_its_object():
    store = FactorStore.create(None, (5, 4), 2, row_chunk=5, col_chunk=4)
    store.commit([write_factor(store, "row", 4.0)])
    factor = store.factor("row")
    del store
    np.testing.assert_array_equal(np.asarray(factor), 4.0)


HOLD_LOCK = """
import sys, time
from daskwals import FactorStore
store = FactorStore.open(sys.argv[1])
with store.writer():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_single_writer_lock(tmp_path, small):
    import subprocess
    import sys

    from daskwals import WALS
    from daskwals.store import StoreLockedError

    path = tmp_path / "m.zarr"
    WALS(2, n_iter=1, seed=0, store=path).fit(small)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=rf"process {holder.pid} .*break_lock=True"):
            WALS(2, n_iter=2, seed=0, store=path, resume=True).fit(small)
        with pytest.raises(StoreLockedError):
            WALS(2, n_iter=1, seed=0, store=path, overwrite=True).fit(small)
        # readers are never blocked
        reader = FactorStore.open(path, mode="r")
        assert reader.meta["sweeps"] == 2 and np.asarray(reader.factor("row")).shape == (30, 2)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the operating system released its lock
    model = WALS(2, n_iter=2, seed=0, store=path, resume=True).fit(small)
    assert model.n_iter_ == 2
    from daskwals.store import writer_lock

    with writer_lock(path):  # released after the fit
        pass


def test_break_lock_proceeds_despite_a_live_lock(tmp_path, small):
    import subprocess
    import sys

    from daskwals import WALS
    from daskwals.store import StoreLockedError

    path = tmp_path / "m.zarr"
    WALS(2, n_iter=1, seed=0, store=path).fit(small)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"process {holder.pid}"):
            WALS(2, n_iter=2, seed=0, store=path, resume=True).fit(small)
        model = WALS(2, n_iter=2, seed=0, store=path, resume=True, break_lock=True).fit(small)
        assert model.n_iter_ == 2
    finally:
        holder.kill()
        holder.wait()
