"""Train/test splits of ratings, decided entry by entry and built lazily, block by block.

Every decision depends only on ``(seed, global row, global column)`` through a 64-bit
hash, never on the chunking, on the order in which blocks are computed or on the
scheduler: one seed gives one split for every chunking of the same matrix. Both
orientations of the result (``.rows`` = A, ``.cols`` = Aᵀ) are filtered from the input's
own blocks by the same rule, so they always hold the same entries, and nothing is
computed until the result is.

The hash is ``h = mix(mix(mix(mix(seed) + stream) + row) + col)`` with ``mix`` the
splitmix64 finaliser, a bijection of 64-bit integers: for a fixed seed and row, distinct
columns get distinct hashes, so "the k smallest hashes of a row" has no ties.
"""

from __future__ import annotations

import logging
import numbers
from typing import NamedTuple

import dask.array as da
import numpy as np
import sparse

from .ratings import Ratings, _check_shape, _resolve_chunks, as_ratings

__all__ = ["Split", "by_timestamp", "leave_k_out", "random_split"]

logger = logging.getLogger(__name__)

# Independent hash streams, so that two kinds of split with one seed are unrelated.
_STREAM_RANDOM = 1
_STREAM_LEAVE_K = 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


class Split(NamedTuple):
    """The two halves of a split: unpack as ``train, test = random_split(...)``."""

    train: Ratings
    test: Ratings


# -------------------------------------------------------------------------- hashing
def _mix(x):
    """splitmix64: a bijection of uint64 arrays (wrapping arithmetic, arrays only)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _stream_key(seed, stream):
    """The per-(seed, stream) key, a 1-element uint64 array (arrays never warn on wrap)."""
    return _mix(_mix(np.array([seed], dtype=np.uint64)) + np.uint64(stream))


def _entry_hash(key, rows, cols):
    """uint64 hash of each (global row, global column) pair under ``key``."""
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    cols = np.asarray(cols, dtype=np.int64).astype(np.uint64)
    return _mix(_mix(key + rows) + cols)


def _uniform(key, rows, cols):
    """A float64 in [0, 1) per entry: the top 53 bits of its hash."""
    return (_entry_hash(key, rows, cols) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --------------------------------------------------------------------- block filters
def _global_coords(block, index0, index1, transposed):
    """Global (row, col) of the entries of a block of A (or of Aᵀ when ``transposed``)."""
    g0 = np.asarray(index0)[block.coords[0]]
    g1 = np.asarray(index1)[block.coords[1]]
    return (g1, g0) if transposed else (g0, g1)


def _subset(block, keep):
    """The entries of a ``sparse.COO`` block where ``keep`` is true, order preserved."""
    return sparse.COO(
        block.coords[:, keep], block.data[keep], shape=block.shape, has_duplicates=False,
        sorted=bool(getattr(block, "sorted", False)), prune=False, fill_value=block.fill_value,
    )


def _random_block(block, index0, index1, *, key, fraction, transposed, want_test):
    rows, cols = _global_coords(block, index0, index1, transposed)
    test = _uniform(key, rows, cols) < fraction
    return _subset(block, test if want_test else ~test)


def _row_thresholds(blocks, index0, *, key, k, min_interactions, col_starts):
    """Per row of one row block: ``[eligible, hash of its k-th smallest entry]``.

    ``blocks`` are the row block's pieces over all column blocks. A row is eligible
    when it has at least ``min_interactions`` stored entries; its held-out entries are
    then exactly those whose hash is at most the threshold (k of them, hashes being
    distinct within a row).
    """
    n_rows = len(index0)
    local, hashes = [], []
    for block, start in zip(blocks, col_starts):
        r = np.asarray(block.coords[0], dtype=np.int64)
        c = np.asarray(block.coords[1], dtype=np.int64) + start
        local.append(r)
        hashes.append(_entry_hash(key, np.asarray(index0)[r], c))
    local = np.concatenate(local) if local else np.zeros(0, np.int64)
    hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    order = np.lexsort((hashes, local))
    counts = np.bincount(local, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.zeros((n_rows, 2), dtype=np.uint64)
    eligible = counts >= min_interactions
    out[eligible, 0] = 1
    out[eligible, 1] = hashes[order[starts[eligible] + k - 1]]
    return out


def _leave_block(block, index0, index1, thresholds, *, key, transposed, want_test):
    rows, cols = _global_coords(block, index0, index1, transposed)
    local_row = block.coords[1] if transposed else block.coords[0]
    thr = thresholds[local_row]
    test = (thr[:, 0] == 1) & (_entry_hash(key, rows, cols) <= thr[:, 1])
    return _subset(block, test if want_test else ~test)


# ------------------------------------------------------------------------ builders
def _meta():
    return sparse.COO.from_numpy(np.empty((0, 0), dtype=np.float64))


def _index(sizes):
    """Global indices 0..n-1 chunked like one axis of the ratings."""
    return da.arange(sum(sizes), chunks=(tuple(sizes),), dtype=np.int64)


def _filtered(ratings, func, extra=(), **kwargs):
    """Train and test Ratings: ``func`` applied to every block of both orientations.

    ``extra`` are (array, index) pairs aligned with the *rows* of A (index "i").
    """
    ridx, cidx = _index(ratings.chunks[0]), _index(ratings.chunks[1])
    halves = []
    for want_test in (False, True):
        common = dict(kwargs, want_test=want_test, dtype=ratings.rows.dtype, meta=_meta(),
                      concatenate=True)
        rows = da.blockwise(func, "ij", ratings.rows, "ij", ridx, "i", cidx, "j", *extra,
                            transposed=False, **common)
        cols = da.blockwise(func, "ji", ratings.cols, "ji", cidx, "j", ridx, "i", *extra,
                            transposed=True, **common)
        halves.append(Ratings(rows, cols, row_ids=ratings.row_ids, col_ids=ratings.col_ids,
                              in_memory=ratings.in_memory))
    return Split(*halves)


def random_split(
    ratings, test_fraction: float = 0.2, seed: int = 0, *, chunks="auto"
) -> Split:
    """Hold out each stored entry independently with probability ``test_fraction``.

    Entry (i, j) goes to test when ``u(seed, i, j) < test_fraction``, where ``u`` is a
    uniform number in [0, 1) derived from a 64-bit hash of (seed, i, j) (see the module
    docstring). The split is lazy, is built from the input's blocks in both
    orientations, and does not depend on the chunking; the test fraction is
    ``test_fraction`` in expectation (binomial around it).

    Parameters
    ----------
    ratings : Ratings or anything :func:`daskwals.as_ratings` accepts
        The matrix to split; its chunking is kept.
    test_fraction : float
        Probability that an entry is held out, in the open interval (0, 1).
    seed : int
        A non-negative integer; the same seed gives the same split.
    chunks : "auto", int or (int, int)
        Block sizes used only when ``ratings`` is not already chunked.

    Returns
    -------
    Split
        ``(train, test)``, two :class:`daskwals.Ratings` with the input's chunking and
        disjoint stored entries whose union is the input's.
    """
    ratings = as_ratings(ratings, chunks=chunks)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not (
        0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}. "
            "Use for example test_fraction=0.2 to hold out about 20% of the entries."
        )
    key = _stream_key(_check_seed(seed), _STREAM_RANDOM)
    return _filtered(ratings, _random_block, key=key, fraction=float(test_fraction))


def leave_k_out(
    ratings, k: int = 1, seed: int = 0, min_interactions: int = 2, *, chunks="auto"
) -> Split:
    """Hold out exactly ``k`` stored entries of every row with enough of them.

    A row with at least ``min_interactions`` stored entries gives the ``k`` entries
    with the smallest hash of (seed, row, column) to test, the rest to train; a row with
    fewer stays whole in train. The choice is uniform among the row's entries, does
    not depend on the chunking, and is made once per row block (one task reads the
    row block's pieces over all column blocks, as a row sweep does); both orientations
    are then filtered from their own blocks with those per-row thresholds.

    Parameters
    ----------
    ratings : Ratings or anything :func:`daskwals.as_ratings` accepts
        The matrix to split (rows are users); its chunking is kept.
    k : int
        Entries held out per eligible row, ≥ 1.
    seed : int
        A non-negative integer; the same seed gives the same split.
    min_interactions : int
        Rows with fewer stored entries are not split. Must be ≥ ``k``; the default 2
        with ``k=1`` leaves every split row at least one training entry (in general use
        ``min_interactions = k + 1`` for that).
    chunks : "auto", int or (int, int)
        Block sizes used only when ``ratings`` is not already chunked.

    Returns
    -------
    Split
        ``(train, test)``, two lazy :class:`daskwals.Ratings` with the input's chunking.
    """
    ratings = as_ratings(ratings, chunks=chunks)
    k = _check_int("k", k, 1)
    min_interactions = _check_int("min_interactions", min_interactions, 1)
    if min_interactions < k:
        raise ValueError(
            f"min_interactions ({min_interactions}) must be ≥ k ({k}), since a row needs k "
            f"entries to hold out k; pass min_interactions={k + 1} to also keep at least one "
            "training entry in every split row."
        )
    key = _stream_key(_check_seed(seed), _STREAM_LEAVE_K)
    ridx = _index(ratings.chunks[0])
    col_starts = tuple(int(s) for s in np.cumsum((0,) + ratings.chunks[1][:-1]))
    thresholds = da.blockwise(
        _row_thresholds, "iz", ratings.rows, "ij", ridx, "i", new_axes={"z": 2},
        concatenate=False, dtype=np.uint64, meta=np.empty((0, 0), dtype=np.uint64),
        key=key, k=k, min_interactions=min_interactions, col_starts=col_starts,
    )
    return _filtered(ratings, _leave_block, extra=(thresholds, "iz"), key=key)


def by_timestamp(
    row, col, values, timestamps, shape, *, cutoff=None, test_fraction: float | None = None,
    chunks="auto", sum_duplicates: bool = False,
) -> Split:
    """Split COO triplets in time: entries at or after a cutoff time are the test set.

    :class:`daskwals.Ratings` carries no timestamps, so this split works on the
    triplets before they become ratings, and builds train and test with
    :meth:`daskwals.Ratings.from_coo` and *the same* block sizes (resolved once on all
    entries), so a model fitted on train can be scored on test directly. From a
    pandas DataFrame pass its columns, e.g. ``by_timestamp(df.user.to_numpy(),
    df.item.to_numpy(), df.rating.to_numpy(), df.timestamp.to_numpy(), shape, ...)``.

    Parameters
    ----------
    row, col : array-like of int
        Zero-based row and column of each entry.
    values : array-like of float
        The stored values.
    timestamps : array-like
        One time per entry: numbers or ``datetime64``; NaN or NaT is refused.
    shape : (int, int)
        (n_rows, n_cols) of the matrix.
    cutoff : scalar, optional
        Entries with ``timestamp >= cutoff`` go to test, the others to train. Compared
        in the dtype of ``timestamps`` (a ``datetime64`` or pandas Timestamp for
        datetime64 times).
    test_fraction : float, optional
        Instead of ``cutoff``: the cutoff is the timestamp at 0-based position
        ``floor((1 - test_fraction) * nnz)`` of the sorted timestamps, so that at least
        a ``test_fraction`` share (more when times tie at the cutoff) is test. Give
        exactly one of ``cutoff`` and ``test_fraction``.
    chunks : "auto", int or (int, int)
        Block sizes of both results; "auto" is resolved on all entries.
    sum_duplicates : bool
        Add up repeated (row, col) pairs within each half instead of refusing them.

    Returns
    -------
    Split
        ``(train, test)`` :class:`daskwals.Ratings` with equal block sizes.
    """
    ts = np.asarray(timestamps)
    size = np.asarray(values).size
    if ts.ndim != 1 or ts.size != size:
        raise ValueError(
            f"timestamps must be 1-d with one value per entry ({size}); got shape {ts.shape}"
        )
    is_time = np.issubdtype(ts.dtype, np.datetime64)
    if not (is_time or np.issubdtype(ts.dtype, np.number)) or np.issubdtype(
        ts.dtype, np.complexfloating
    ):
        raise ValueError(
            f"timestamps must be numbers or datetime64; got dtype {ts.dtype}. Convert them, "
            "for example with pandas.to_datetime(...).to_numpy()."
        )
    missing = np.isnat(ts) if is_time else ~np.isfinite(ts)
    if missing.any():
        p = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"timestamps contain {int(missing.sum())} missing or non-finite values; the first "
            f"is at position {p}. Drop or fill those entries before splitting."
        )
    if (cutoff is None) == (test_fraction is None):
        raise ValueError(
            f"give exactly one of cutoff and test_fraction; got cutoff={cutoff!r} and "
            f"test_fraction={test_fraction!r}"
        )
    if test_fraction is not None:
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not (
            0.0 < float(test_fraction) < 1.0
        ):
            raise ValueError(
                f"test_fraction must be strictly between 0 and 1; got {test_fraction!r}"
            )
        if size == 0:
            raise ValueError("cannot choose a cutoff by test_fraction for zero entries")
        position = min(size - 1, int(np.floor((1.0 - float(test_fraction)) * size)))
        cutoff = np.partition(ts, position)[position]
        logger.info("by_timestamp: cutoff %s holds out entries at or after it", cutoff)
    else:
        cutoff = _check_cutoff(cutoff, ts.dtype, is_time)
    test = ts >= cutoff
    shape = _check_shape(shape)
    block = _resolve_chunks(chunks, shape, size)
    row, col, values = np.asarray(row), np.asarray(col), np.asarray(values)
    if row.shape != values.shape or col.shape != values.shape:
        raise ValueError(
            f"row, col and values must have the same length; got {row.size}, {col.size} and "
            f"{values.size}"
        )
    halves = [
        Ratings.from_coo(row[mask], col[mask], values[mask], shape, chunks=block,
                         sum_duplicates=sum_duplicates)
        for mask in (~test, test)
    ]
    return Split(*halves)


# ----------------------------------------------------------------------- validation
def _check_cutoff(cutoff, dtype, is_time):
    try:
        if is_time:
            return np.datetime64(cutoff)
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
            raise TypeError
        return cutoff
    except (TypeError, ValueError):
        raise ValueError(
            f"cutoff {cutoff!r} cannot be compared with timestamps of dtype {dtype}; pass a value "
            "of the same kind (a number, or a datetime64 / pandas Timestamp / ISO string)"
        ) from None


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (
        0 <= seed < 2**64
    ):
        raise ValueError(
            f"seed must be an integer in [0, 2**64); got {seed!r}. Pass for example seed=0."
        )
    return int(seed)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}; got {value!r}")
    return int(value)
