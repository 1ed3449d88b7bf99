"""Tests of daskwals.splits: disjoint, complete, chunk-invariant, lazy, seeded splits."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from daskwals import Ratings, splits

SHAPE = (40, 33)


@pytest.fixture(scope="module")
def triplets():
    """A random 40 × 33 matrix with ≈ 30% stored entries, a few of them stored zeros."""
    coo = scipy.sparse.random(*SHAPE, density=0.3, random_state=7, format="coo")
    values = np.round(coo.data * 5, 1)
    values[::17] = 0.0  # stored zeros are observed entries and must be split like others
    return coo.row.astype(np.int64), coo.col.astype(np.int64), values


def _ratings(triplets, chunks):
    return Ratings.from_coo(*triplets, SHAPE, chunks=chunks)


def _entries(array, transpose=False):
    """{(row, col): value} of a dask array with sparse blocks (global coordinates)."""
    coo = array.compute()
    r, c = coo.coords
    if transpose:
        r, c = c, r
    return {(int(i), int(j)): float(v) for i, j, v in zip(r, c, coo.data)}


def _check_split(split, triplets):
    """Disjoint halves whose union is the input, both orientations holding the same."""
    full = {(int(i), int(j)): float(v) for i, j, v in zip(*triplets)}
    train, test = _entries(split.train.rows), _entries(split.test.rows)
    assert not set(train) & set(test)
    assert {**train, **test} == full
    assert _entries(split.train.cols, transpose=True) == train
    assert _entries(split.test.cols, transpose=True) == test
    assert split.train.chunks == split.test.chunks
    return train, test


CHUNKINGS = [7, (5, 11), SHAPE]


# -------------------------------------------------------------------- random_split
def test_random_split_is_a_partition_with_the_expected_fraction(triplets):
    train, test = _check_split(splits.random_split(_ratings(triplets, 7), 0.3, seed=1), triplets)
    nnz = len(triplets[0])
    # binomial: 0.3 ± 4 standard deviations
    assert abs(len(test) / nnz - 0.3) < 4 * np.sqrt(0.3 * 0.7 / nnz)


def test_random_split_fraction_on_a_larger_matrix():
    coo = scipy.sparse.random(400, 300, density=0.1, random_state=3, format="coo")
    split = splits.random_split(Ratings.from_scipy(coo, chunks=(64, 50)), 0.2, seed=5)
    held = split.test.rows.compute().nnz
    assert split.train.rows.compute().nnz + held == coo.nnz
    assert abs(held / coo.nnz - 0.2) < 4 * np.sqrt(0.2 * 0.8 / coo.nnz)


def test_random_split_is_independent_of_chunking_and_reproducible(triplets):
    results = [
        _entries(splits.random_split(_ratings(triplets, c), 0.25, seed=11).test.rows)
        for c in CHUNKINGS
    ]
    assert results[0] == results[1] == results[2]
    again = _entries(splits.random_split(_ratings(triplets, 7), 0.25, seed=11).test.rows)
    assert again == results[0]
    other = _entries(splits.random_split(_ratings(triplets, 7), 0.25, seed=12).test.rows)
    assert other != results[0]


def test_random_split_accepts_scipy_input_and_keeps_ids(triplets):
    matrix = scipy.sparse.coo_matrix((triplets[2], triplets[:2]), shape=SHAPE)
    split = splits.random_split(matrix, 0.5, seed=0, chunks=9)
    assert split.train.chunks[0][0] == 9
    _check_split(split, triplets)
    ratings = Ratings.from_coo(*triplets, SHAPE, chunks=9, row_ids=np.arange(40) + 100)
    assert splits.random_split(ratings).test.row_ids[0] == 100


def test_splits_build_lazily(triplets):
    ratings = _ratings(triplets, 7)

    def refuse(*args, **kwargs):
        raise AssertionError("building a split must not compute anything")

    with dask.config.set(scheduler=refuse):
        splits.random_split(ratings, 0.2, seed=0)
        splits.leave_k_out(ratings, k=1, seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_random_split_rejects_bad_parameters(triplets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        splits.random_split(_ratings(triplets, 7), **kwargs)


# --------------------------------------------------------------------- leave_k_out
@pytest.mark.parametrize("k, min_interactions", [(1, 2), (2, 3), (3, 3)])
def test_leave_k_out_holds_out_exactly_k_per_eligible_row(triplets, k, min_interactions):
    split = splits.leave_k_out(_ratings(triplets, (6, 8)), k=k, seed=4,
                               min_interactions=min_interactions)
    _, test = _check_split(split, triplets)
    per_row = np.bincount(triplets[0], minlength=SHAPE[0])
    held = np.bincount([i for i, _ in test], minlength=SHAPE[0])
    np.testing.assert_array_equal(held, np.where(per_row >= min_interactions, k, 0))


def test_leave_k_out_keeps_short_rows_whole():
    # row 0: one entry (not split), row 1: two entries (one held out), row 2: empty
    ratings = Ratings.from_coo([0, 1, 1], [2, 0, 3], [1.0, 2.0, 3.0], (3, 4), chunks=2)
    train, test = splits.leave_k_out(ratings, k=1, seed=0)
    test_entries = _entries(test.rows)
    assert (0, 2) in _entries(train.rows)
    assert len(test_entries) == 1 and next(iter(test_entries))[0] == 1


def test_leave_k_out_is_independent_of_chunking_and_reproducible(triplets):
    results = [
        _entries(splits.leave_k_out(_ratings(triplets, c), k=2, seed=3,
                                    min_interactions=3).test.rows)
        for c in CHUNKINGS
    ]
    assert results[0] == results[1] == results[2]
    other = splits.leave_k_out(_ratings(triplets, 7), k=2, seed=4, min_interactions=3)
    assert _entries(other.test.rows) != results[0]


def test_leave_k_out_picks_uniformly_within_a_row():
    ratings = Ratings.from_coo([0, 0, 0, 0], [1, 4, 6, 9], np.ones(4), (1, 10), chunks=(1, 3))
    counts = dict.fromkeys([1, 4, 6, 9], 0)
    for seed in range(400):
        ((_, col),) = _entries(splits.leave_k_out(ratings, k=1, seed=seed).test.rows)
        counts[col] += 1
    # each column is held out ≈ 100 times of 400 (σ ≈ 8.7)
    assert all(60 < c < 140 for c in counts.values()), counts


def test_leave_k_out_rejects_bad_parameters(triplets):
    ratings = _ratings(triplets, 7)
    with pytest.raises(ValueError, match=r"min_interactions \(2\) must be ≥ k \(3\)"):
        splits.leave_k_out(ratings, k=3)
    with pytest.raises(ValueError, match="k must be an integer"):
        splits.leave_k_out(ratings, k=0)


@settings(max_examples=12, deadline=None)
@given(
    rc=st.integers(1, 40), cc=st.integers(1, 33), seed=st.integers(0, 2**64 - 1),
    k=st.integers(1, 3),
)
def test_splits_do_not_depend_on_chunking(triplets, rc, cc, seed, k):
    reference = _ratings(triplets, SHAPE)
    chunked = _ratings(triplets, (rc, cc))
    for build in (
        lambda r: splits.random_split(r, 0.3, seed=seed),
        lambda r: splits.leave_k_out(r, k=k, seed=seed, min_interactions=k),
    ):
        a, b = build(reference), build(chunked)
        assert _entries(a.test.rows) == _entries(b.test.rows)
        assert _entries(b.test.cols, transpose=True) == _entries(b.test.rows)
        assert _entries(b.train.cols, transpose=True) == _entries(b.train.rows)


# -------------------------------------------------------------------- by_timestamp
def test_by_timestamp_with_a_cutoff(triplets):
    times = np.arange(len(triplets[0]), dtype=np.float64)[::-1]
    split = splits.by_timestamp(*triplets, times, SHAPE, cutoff=100.0, chunks=(6, 9))
    _, test = _check_split(split, triplets)
    expected = {(int(i), int(j)) for i, j, t in zip(*triplets[:2], times) if t >= 100}
    assert set(test) == expected
    assert split.train.chunks[0][0] == 6 and split.test.chunks[1][0] == 9


def test_by_timestamp_with_a_fraction_uses_one_block_size(triplets):
    nnz = len(triplets[0])
    times = np.random.default_rng(0).permutation(nnz)
    split = splits.by_timestamp(*triplets, times, SHAPE, test_fraction=0.25)
    _, test = _check_split(split, triplets)
    position = int(np.floor(0.75 * nnz))  # the documented cutoff position
    assert len(test) == nnz - position
    assert split.train.chunks == split.test.chunks


def test_by_timestamp_with_datetimes(triplets):
    nnz = len(triplets[0])
    times = np.datetime64("2024-01-01") + np.arange(nnz).astype("timedelta64[h]")
    cutoff = pd.Timestamp("2024-01-03")
    _, test = splits.by_timestamp(*triplets, times, SHAPE, cutoff=cutoff, chunks=10)
    assert _entries(test.rows).keys() == {
        (int(i), int(j)) for i, j, t in zip(*triplets[:2], times) if t >= np.datetime64(cutoff)
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of cutoff and test_fraction"),
        ({"cutoff": 1.0, "test_fraction": 0.2}, "exactly one"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"cutoff": "soon"}, "cutoff"),
    ],
)
def test_by_timestamp_rejects_bad_parameters(triplets, kwargs, match):
    times = np.arange(len(triplets[0]), dtype=np.float64)
    with pytest.raises(ValueError, match=match):
        splits.by_timestamp(*triplets, times, SHAPE, **kwargs)


def test_by_timestamp_rejects_bad_timestamps(triplets):
    times = np.arange(len(triplets[0]), dtype=np.float64)
    times[3] = np.nan
    with pytest.raises(ValueError, match="missing or non-finite.*position 3"):
        splits.by_timestamp(*triplets, times, SHAPE, cutoff=1.0)
    with pytest.raises(ValueError, match="one value per entry"):
        splits.by_timestamp(*triplets, times[:-1], SHAPE, cutoff=1.0)
