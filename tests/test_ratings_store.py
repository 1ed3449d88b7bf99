"""Ratings stores on disk: ingest, the synthetic writer and lazy opening."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import zarr
from dask.callbacks import Callback

import daskwals
from daskwals import _ratings_format, ingest, open_ratings, write_synthetic
from daskwals.ratings_store import read_block, read_metadata

CHUNKS = (16, 7)


@pytest.fixture(scope="module")
def frame():
    """Ratings with string ids, unique (user, item) pairs, weights and timestamps."""
    rng = np.random.default_rng(7)
    n_users, n_items, n = 70, 30, 900
    df = pd.DataFrame({
        "user": [f"user-{u:03d}" for u in rng.integers(0, n_users, n)],
        "item": [f"item-{i}" for i in rng.integers(0, n_items, n)],
        "rating": rng.integers(1, 11, n) / 2.0,
        "weight": rng.random(n) * 3,
        "ts": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), "s"),
    })
    return df.drop_duplicates(["user", "item"]).reset_index(drop=True)


def dense_from(df, row_ids, col_ids, column="rating"):
    """The oracle: the frame mapped through the store's id maps, as a dense matrix."""
    rows = pd.Index(row_ids).get_indexer(df["user"])
    cols = pd.Index(col_ids).get_indexer(df["item"])
    assert (rows >= 0).all() and (cols >= 0).all()
    out = np.zeros((len(row_ids), len(col_ids)))
    out[rows, cols] = df[column].to_numpy(dtype=np.float64)
    return out


def as_dense(ratings):
    rows, cols = dask.compute(ratings.rows, ratings.cols)
    return rows.todense(), cols.todense()


def write_source(kind, df, tmp_path):
    if kind == "csv":
        df.to_csv(tmp_path / "ratings.csv", index=False)
        return str(tmp_path / "ratings.csv")
    if kind == "csv-glob":
        for k, part in enumerate(np.array_split(np.arange(len(df)), 3)):
            df.iloc[part].to_csv(tmp_path / f"part-{k}.csv", index=False)
        return str(tmp_path / "part-*.csv")
    if kind == "parquet":
        dd.from_pandas(df, npartitions=3).to_parquet(tmp_path / "ratings.parquet")
        return tmp_path / "ratings.parquet"
    if kind == "pandas":
        return df
    # a dask frame with an empty partition in the middle
    empty = dd.from_pandas(df.iloc[:0], npartitions=1)
    halves = [dd.from_pandas(df.iloc[: len(df) // 2], npartitions=2),
              dd.from_pandas(df.iloc[len(df) // 2 :], npartitions=2)]
    return dd.concat([halves[0], empty, halves[1]])


@pytest.mark.parametrize("kind", ["csv", "csv-glob", "parquet", "pandas", "dask"])
def test_round_trip_with_string_ids(kind, frame, tmp_path):
    df = frame[["user", "item", "rating"]]
    source = write_source(kind, df, tmp_path)
    summary = ingest(source, tmp_path / "store", chunks=CHUNKS, blocksize=3_000)
    assert summary["nnz"] == len(df) and summary["chunks"] == CHUNKS
    ratings = open_ratings(summary["path"])
    assert not ratings.in_memory and ratings.nnz == len(df)
    np.testing.assert_array_equal(ratings.row_ids, np.sort(df["user"].unique()))
    np.testing.assert_array_equal(ratings.col_ids, np.sort(df["item"].unique()))
    assert ratings.chunks[0][0] == CHUNKS[0] and ratings.chunks[1][0] == CHUNKS[1]
    rows, cols = as_dense(ratings)
    np.testing.assert_array_equal(rows, dense_from(df, ratings.row_ids, ratings.col_ids))
    np.testing.assert_array_equal(cols, rows.T)


def test_csv_is_read_in_several_partitions(frame, tmp_path):
    # the round trip above must exercise the multi-partition routing
    path = write_source("csv", frame[["user", "item", "rating"]], tmp_path)
    assert dd.read_csv(path, blocksize=3_000).npartitions > 2


def test_weights_and_timestamps_are_stored(frame, tmp_path):
    source = write_source("parquet", frame, tmp_path)
    ingest(source, tmp_path / "store", weight_col="weight", timestamp_col="ts", chunks=CHUNKS)
    meta = read_metadata(tmp_path / "store")
    assert meta["fields"] == ["value", "weight", "timestamp"]
    ratings = open_ratings(tmp_path / "store", field="weight")
    expected = dense_from(frame, ratings.row_ids, ratings.col_ids, "weight")
    np.testing.assert_allclose(as_dense(ratings)[0], expected, rtol=0, atol=0)
    block = read_block(tmp_path / "store", "rows", 1, 2)
    users = ratings.row_ids[CHUNKS[0] + block["row"]]
    items = ratings.col_ids[2 * CHUNKS[1] + block["col"]]
    found = frame.set_index(["user", "item"]).loc[list(zip(users, items))]
    np.testing.assert_array_equal(block["timestamp"], found["ts"].dt.as_unit("ns").astype("int64"))
    assert np.all(np.diff(block["row"]) >= 0)  # row-major inside a block


def test_duplicates_are_refused_and_nothing_is_left(frame, tmp_path):
    df = frame[["user", "item", "rating"]]
    dup = pd.concat([df, df.iloc[[5, 9, 9]]], ignore_index=True)
    with pytest.raises(ValueError, match=r"3 duplicate \(user, item\) entries; the first is"):
        ingest(dup, tmp_path / "store", chunks=CHUNKS)
    assert list(tmp_path.iterdir()) == []  # no store, no partial sibling


def test_sum_duplicates_adds_them_up(frame, tmp_path):
    df = frame[["user", "item", "rating"]]
    dup = pd.concat([df, df.iloc[[5]]], ignore_index=True)
    summary = ingest(dup, tmp_path / "store", chunks=CHUNKS, sum_duplicates=True)
    assert summary["duplicates_summed"] == 1 and summary["nnz"] == len(df)
    ratings = open_ratings(tmp_path / "store")
    expected = dense_from(df, ratings.row_ids, ratings.col_ids)
    i = np.searchsorted(ratings.row_ids, df["user"].iloc[5])
    j = np.searchsorted(ratings.col_ids, df["item"].iloc[5])
    expected[i, j] *= 2
    rows, cols = as_dense(ratings)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(cols, expected.T)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_ratings_are_refused(bad, frame, tmp_path):
    df = frame[["user", "item", "rating"]].copy()
    df.loc[df.index[[3, 4]], "rating"] = bad
    with pytest.raises(ValueError, match=r"column 'rating' has 2 NaN or infinite values"):
        ingest(df, tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_non_numeric_rating_in_a_late_csv_partition(frame, tmp_path):
    df = frame[["user", "item", "rating"]].astype({"rating": object})
    df.loc[df.index[-3], "rating"] = "five"
    path = write_source("csv", df, tmp_path)
    with pytest.raises(ValueError, match=r"column 'rating' has 1 values that are not numbers; "
                                         r"the first is 'five'"):
        ingest(path, tmp_path / "store", blocksize=3_000)
    assert not (tmp_path / "store").exists()


def test_missing_columns_are_named(frame, tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['score'\]"):
        ingest(frame, tmp_path / "store", rating_col="score")


def test_existing_paths_are_protected(frame, tmp_path):
    df = frame[["user", "item", "rating"]]
    ingest(df, tmp_path / "store", chunks=CHUNKS)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ingest(df, tmp_path / "store", chunks=CHUNKS)
    ingest(df.iloc[:100], tmp_path / "store", chunks=CHUNKS, overwrite=True)
    assert open_ratings(tmp_path / "store").nnz == 100
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="not a daskwals ratings store"):
        ingest(df, tmp_path / "other", overwrite=True)


def test_interrupted_store_refuses_to_open(frame, tmp_path):
    ingest(frame[["user", "item", "rating"]], tmp_path / "store", chunks=CHUNKS)
    group = zarr.open_group(str(tmp_path / "store"), mode="r+")
    meta = dict(group.attrs[_ratings_format.ATTR])
    meta["complete"] = False
    group.attrs[_ratings_format.ATTR] = meta
    with pytest.raises(ValueError, match="incomplete"):
        open_ratings(tmp_path / "store")
    # a writer killed before its commit leaves only a hidden partial sibling
    builder = _ratings_format.StoreBuilder(tmp_path / "killed")
    builder.group.attrs[_ratings_format.ATTR] = {**meta, "complete": False}
    with pytest.raises(FileNotFoundError):
        open_ratings(tmp_path / "killed")
    with pytest.raises(ValueError, match="incomplete"):
        open_ratings(builder.tmp)


def test_opening_is_lazy(frame, tmp_path, monkeypatch):
    ingest(frame[["user", "item", "rating"]], tmp_path / "store", chunks=CHUNKS)
    reads = []
    real = _ratings_format.read_entries
    monkeypatch.setattr(_ratings_format, "read_entries",
                        lambda *args: reads.append(args[1:4]) or real(*args))
    tasks = []
    with Callback(pretask=lambda key, dsk, state: tasks.append(key)):
        ratings = open_ratings(tmp_path / "store")
        ratings.T  # noqa: B018 - a property that builds a new Ratings
    assert reads == [] and tasks == []
    block = ratings.rows.blocks[1, 2].compute()
    assert len(reads) == 1 and reads[0][0] == "rows"
    assert block.shape == (CHUNKS[0], CHUNKS[1]) and block.coords.dtype == np.int64
    # one task per block, plus the store's array-like view they share
    assert len(ratings.rows.dask) == ratings.rows.numblocks[0] * ratings.rows.numblocks[1] + 1
    np.testing.assert_array_equal(ratings.rows[:5, 3:9].compute().todense(),
                                  as_dense(ratings)[0][:5, 3:9])


def test_a_million_blocks_open_without_building_their_graph():
    from daskwals.ratings import _sizes
    from daskwals.ratings_store import _lazy_blocks

    chunks = (_sizes(1_000_000, 1000), _sizes(1_000_000, 1000))  # 10^6 blocks
    offsets = np.arange(10**6 + 1, dtype=np.int64)
    array = _lazy_blocks("unused", "rows", "value", offsets, chunks, "test-million")
    assert array.numblocks == (1000, 1000)
    assert sum(len(layer) if layer.is_materialized() else 0
               for layer in array.dask.layers.values()) < 10


def test_synthetic_is_deterministic(tmp_path):
    kwargs = dict(rank=4, chunks=(60, 25), popularity_exponent=1.0)
    a = write_synthetic(tmp_path / "a", 300, 100, 4000, seed=3, **kwargs)
    b = write_synthetic(tmp_path / "b", 300, 100, 4000, seed=3, **kwargs)
    c = write_synthetic(tmp_path / "c", 300, 100, 4000, seed=4, **kwargs)
    assert a["nnz"] == b["nnz"] and 0.9 < a["nnz"] / 4000 < 1.1
    ra, rb, rc = (open_ratings(s["path"]) for s in (a, b, c))
    assert ra.row_ids is None and ra.chunks[0][0] == 60
    dense_a, dense_at = as_dense(ra)
    np.testing.assert_array_equal(dense_a, as_dense(rb)[0])
    np.testing.assert_array_equal(dense_at, dense_a.T)
    assert not np.array_equal(dense_a, as_dense(rc)[0])
    # power-law popularity: the top 10% of items hold far more than 10% of the entries
    per_item = np.sort((dense_a != 0).sum(axis=0))[::-1]
    assert per_item[:10].sum() > 0.3 * per_item.sum()


@pytest.mark.parametrize("span", [1, 37, 10**6])
def test_transposition_in_spans_and_spill_groups(span, frame, tmp_path, monkeypatch):
    """Aᵀ is A transposed, with weights and timestamps, whatever the spill granularity."""
    monkeypatch.setattr(_ratings_format, "TRANSPOSE_SPAN", span)
    ingest(frame, tmp_path / "store", chunks=CHUNKS, weight_col="weight", timestamp_col="ts")
    for field in ("value", "weight", "timestamp"):
        dense, dense_t = as_dense(open_ratings(tmp_path / "store", field=field))
        np.testing.assert_array_equal(dense_t, dense.T)
    for block in dask.compute(*open_ratings(tmp_path / "store").cols.to_delayed().ravel()):
        flat = block.coords[0] * block.shape[1] + block.coords[1]
        assert np.all(np.diff(flat) > 0)  # row-major inside every block
    ratings = open_ratings(tmp_path / "store", field="weight")
    np.testing.assert_array_equal(
        as_dense(ratings)[0], dense_from(frame, ratings.row_ids, ratings.col_ids, "weight"))
    summary = write_synthetic(tmp_path / "synthetic", 300, 100, 4000, rank=4, chunks=(60, 25))
    dense, dense_t = as_dense(open_ratings(summary["path"]))
    np.testing.assert_array_equal(dense_t, dense.T)
    assert (dense != 0).sum() > 3000
    # no spill file outlives the writing
    assert not list((tmp_path / "synthetic").glob("_scratch_*"))


@pytest.mark.parametrize("cache", [True, False])
def test_wals_on_a_store_matches_in_memory(cache, frame, tmp_path, monkeypatch):
    from daskwals import _graph

    monkeypatch.setattr(_graph, "MIN_GROUPS", 2)  # groups of several blocks
    df = frame[["user", "item", "rating", "weight"]]
    ingest(df, tmp_path / "store", chunks=CHUNKS, weight_col="weight")
    ratings = open_ratings(tmp_path / "store")
    weights = open_ratings(tmp_path / "store", field="weight")
    assert ratings.source is not None and ratings.T.source.orientation == "cols"
    matrix = scipy.sparse.csr_matrix(dense_from(df, ratings.row_ids, ratings.col_ids))
    weight_matrix = scipy.sparse.csr_matrix(
        dense_from(df, ratings.row_ids, ratings.col_ids, "weight"))
    kwargs = dict(n_iter=2, dtype="float64", seed=0, use_factors_weights_cache=cache)
    tasks = []
    with Callback(pretask=lambda key, dsk, state: tasks.append(str(key))):
        on_disk = daskwals.WALS(4, entry_weights=weights, **kwargs).fit(ratings)
    # sweeps read the store inside their gather or solve tasks, never block by block
    assert not [t for t in tasks if "ratings-store" in t]
    in_memory = daskwals.WALS(4, chunks=CHUNKS, entry_weights=weight_matrix,
                              **kwargs).fit(matrix)
    for attr in ("row_factors_", "col_factors_"):
        np.testing.assert_allclose(getattr(on_disk, attr).compute(),
                                   getattr(in_memory, attr).compute(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(on_disk.loss_history_, in_memory.loss_history_, rtol=1e-12)
    np.testing.assert_allclose(on_disk.loss(), in_memory.loss(), rtol=1e-12)


def test_mixed_id_types_are_refused(frame, tmp_path):
    df = frame[["user", "item", "rating"]].astype({"user": object})
    df.loc[df.index[0], "user"] = 12345
    # by default dask turns object columns into strings; without that, mixed ids are refused
    with dask.config.set({"dataframe.convert-string": False}), pytest.raises(
        ValueError, match=r"ids in column 'user' mix types.*astype\(str\)"
    ):
        ingest(df, tmp_path / "store")
    assert list(tmp_path.iterdir()) == []
