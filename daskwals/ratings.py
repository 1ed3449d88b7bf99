"""The ratings matrix as chunked, ``sparse``-backed dask arrays in both orientations."""

from __future__ import annotations

import logging
import math
import numbers
import warnings

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import sparse

__all__ = ["Ratings", "as_ratings"]

logger = logging.getLogger(__name__)

# Default target of stored entries per block: large enough that per-task overhead is
# small, small enough that a task's memory (≈ 20 B per entry) stays far under a worker's.
TARGET_BLOCK_NNZ = 2_000_000


def _sparse_meta(dtype=np.float64):
    return sparse.COO.from_numpy(np.empty((0, 0), dtype=dtype))


class Ratings:
    """A ratings (interaction) matrix A, n × m, held as chunked dask arrays.

    ``rows`` is A itself, chunked ``(row_chunks, col_chunks)``, for row sweeps;
    ``cols`` is Aᵀ, chunked ``(col_chunks, row_chunks)``, for column sweeps. Every block
    is a ``sparse.COO`` array whose coordinates are sorted row-major. Stored entries
    are the observed set, explicitly stored zeros included.

    Build one with :func:`as_ratings` or the ``from_*`` class methods rather than the
    constructor, which trusts its arguments.

    Parameters
    ----------
    rows, cols : dask.array.Array
        A and Aᵀ with matching (transposed) chunking and ``sparse.COO`` blocks.
    nnz : int, optional
        Number of stored entries, when known without computing.
    row_ids, col_ids : array-like, optional
        Original identifiers of the rows and columns (position ``i`` holds the id of
        row ``i``).
    """

    def __init__(self, rows, cols, nnz=None, row_ids=None, col_ids=None, in_memory=False,
                 source=None):
        if rows.shape != cols.shape[::-1] or rows.chunks != cols.chunks[::-1]:
            raise ValueError(
                "rows and cols must be A and its transpose with transposed chunking; got "
                f"shapes {rows.shape} and {cols.shape}, chunks {rows.chunks} and {cols.chunks}"
            )
        self.rows = rows
        self.cols = cols
        self._nnz = nnz
        self.row_ids = row_ids
        self.col_ids = col_ids
        # True when the blocks are literal data in the graph (built from in-memory
        # input): persist such ratings once rather than resend them with every sweep.
        self.in_memory = in_memory
        # For ratings opened from a store: where each block's entries lie on disk, so
        # that sweeps read several blocks in one task (see daskwals.ratings_store).
        self.source = source

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        """(n, m): rows × columns."""
        return self.rows.shape

    @property
    def chunks(self):
        """Block sizes ``(row_chunks, col_chunks)`` as tuples of ints."""
        return self.rows.chunks

    @property
    def T(self):
        """The transposed ratings Aᵀ (no data is moved)."""
        return Ratings(self.cols, self.rows, self._nnz, self.col_ids, self.row_ids,
                       self.in_memory, None if self.source is None else self.source.T)

    @property
    def nnz(self):
        """Number of stored entries (computed once if not known)."""
        if self._nnz is None:
            counts = self.rows.map_blocks(
                _block_nnz, dtype=np.int64, chunks=(1, 1), meta=np.empty((0, 0), np.int64)
            )
            self._nnz = int(counts.sum().compute())
        return self._nnz

    def __repr__(self):
        nnz = "?" if self._nnz is None else f"{self._nnz:,}"
        return (
            f"<Ratings shape={self.shape} nnz={nnz} "
            f"blocks={len(self.chunks[0])}×{len(self.chunks[1])}>"
        )

    def persist(self, **kwargs):
        """Persist both orientations in (cluster) memory and return a new Ratings."""
        with warnings.catch_warnings():
            # in-memory blocks are sent to the cluster once, here, by design
            warnings.filterwarnings("ignore", message="Sending large graph")
            rows, cols = dask.persist(self.rows, self.cols, **kwargs)
        return Ratings(rows, cols, self._nnz, self.row_ids, self.col_ids)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_coo(
        cls, row, col, values, shape, *, chunks="auto", sum_duplicates=False, row_ids=None,
        col_ids=None,
    ):
        """Build from COO triplets: ``A[row[p], col[p]] = values[p]``.

        Parameters
        ----------
        row, col : array-like of int
            Zero-based row and column index of each stored entry.
        values : array-like of float
            The stored values (zeros are stored entries too).
        shape : tuple of int
            (n, m).
        chunks : "auto", int or (row_chunk, col_chunk)
            Rows (columns) per block; "auto" aims at about 2e6 stored entries per block.
        sum_duplicates : bool
            Sum repeated (row, col) pairs instead of refusing them.
        """
        row, col, values, shape = _validate_triplets(row, col, values, shape, sum_duplicates)
        rc, cc = _resolve_chunks(chunks, shape, values.size)
        rows = _blocked_array(row, col, values, shape, (rc, cc), "ratings-rows")
        cols = _blocked_array(col, row, values, shape[::-1], (cc, rc), "ratings-cols")
        return cls(rows, cols, nnz=int(values.size), row_ids=row_ids, col_ids=col_ids,
                   in_memory=True)

    @classmethod
    def from_scipy(cls, matrix, *, chunks="auto", sum_duplicates=False):
        """Build from a ``scipy.sparse`` matrix or array; explicitly stored zeros count."""
        coo = matrix.tocoo()
        return cls.from_coo(
            coo.row, coo.col, coo.data, coo.shape, chunks=chunks, sum_duplicates=sum_duplicates
        )

    @classmethod
    def from_sparse(cls, array, *, chunks="auto"):
        """Build from a 2-d ``sparse`` array (COO, GCXS, ...); stored zeros count."""
        if array.ndim != 2:
            raise ValueError(f"ratings must be 2-d; got a sparse array of shape {array.shape}")
        if getattr(array, "fill_value", 0) != 0:
            raise ValueError(
                f"the sparse array has fill_value={array.fill_value!r}; unobserved entries must "
                "be 0. Build it with fill_value=0."
            )
        coo = array.tocoo() if not isinstance(array, sparse.COO) else array
        return cls.from_coo(coo.coords[0], coo.coords[1], coo.data, coo.shape, chunks=chunks)

    @classmethod
    def from_dask(cls, array):
        """Build from a dask array with ``sparse`` blocks, keeping its chunking.

        The chunking must be regular (equal blocks except the last on each axis), because
        factor chunks in the store equal the blocks; irregular chunking is rechunked to
        the largest block size with a warning. Values are checked lazily, block by block,
        when the matrix is first read.
        """
        if array.ndim != 2:
            raise ValueError(f"ratings must be 2-d; got a dask array of shape {array.shape}")
        _check_numeric(array.dtype)
        if any(math.isnan(s) for s in array.shape):
            raise ValueError(
                "the dask array has unknown chunk sizes; call .compute_chunk_sizes() first"
            )
        if not all(_is_regular(c) for c in array.chunks):
            target = tuple(max(c) for c in array.chunks)
            warnings.warn(
                f"ratings chunks {array.chunks} are irregular; rechunking to {target} so that "
                "factor chunks can equal the blocks",
                UserWarning,
                stacklevel=2,
            )
            array = array.rechunk(target)
        meta = _sparse_meta()
        rows = array.map_blocks(_normalise_block, dtype=np.float64, meta=meta)
        cols = da.transpose(array).map_blocks(_normalise_block, dtype=np.float64, meta=meta)
        return cls(rows, cols)


def as_ratings(X, *, chunks="auto", sum_duplicates=False):
    """Return ``X`` as :class:`Ratings`.

    Accepts a :class:`Ratings` (returned as is), a ``scipy.sparse`` matrix or array, a
    2-d ``sparse`` array, or a dask array with ``sparse`` blocks (chunking kept).
    """
    if isinstance(X, Ratings):
        return X
    if scipy.sparse.issparse(X):
        return Ratings.from_scipy(X, chunks=chunks, sum_duplicates=sum_duplicates)
    if isinstance(X, sparse.SparseArray):
        return Ratings.from_sparse(X, chunks=chunks)
    if isinstance(X, da.Array):
        if not isinstance(X._meta, sparse.SparseArray):
            raise TypeError(
                "a dask array of ratings must have sparse blocks (meta "
                f"{type(X._meta).__name__}); use X.map_blocks(sparse.COO.from_numpy) or pass "
                "a scipy.sparse matrix"
            )
        return Ratings.from_dask(X)
    raise TypeError(
        f"cannot use an object of type {type(X).__name__} as ratings; pass a scipy.sparse "
        "matrix, a sparse array, a dask array with sparse blocks or a daskwals.Ratings "
        "(dense arrays are refused because every entry of a dense array would count as observed)"
    )


# ---------------------------------------------------------------------- validation
def _check_numeric(dtype):
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) or np.issubdtype(
        dtype, np.complexfloating
    ):
        raise ValueError(
            f"ratings must be real numbers; got dtype {dtype}. Convert the values with "
            ".astype(float) after checking them."
        )


def _as_index(name, values, size, axis):
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} indices must be 1-d; got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            arr == np.round(arr)
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(
                f"{name} indices must be integers; got dtype {arr.dtype}. Map arbitrary ids "
                "to 0..n-1 first (for example with pandas.factorize)."
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size:
        bad = np.flatnonzero((arr < 0) | (arr >= size))
        if bad.size:
            first = int(bad[0])
            raise ValueError(
                f"{bad.size} {name} indices are outside [0, {size}) for shape[{axis}]={size}; "
                f"the first is {int(arr[first])} at position {first}. Use zero-based indices "
                "and a shape that covers them."
            )
    return arr


def _check_shape(shape):
    """``shape`` as a pair of positive ints (n_rows, n_cols)."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a pair of ints; got {shape!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive ints (n_rows, n_cols); got {shape}")
    return shape


def _validate_triplets(row, col, values, shape, sum_duplicates):
    shape = _check_shape(shape)
    values = np.asarray(values)
    _check_numeric(values.dtype)
    values = values.astype(np.float64)
    row = _as_index("row", row, shape[0], 0)
    col = _as_index("column", col, shape[1], 1)
    if not (row.size == col.size == values.size):
        raise ValueError(
            f"row, col and values must have the same length; got {row.size}, {col.size} and "
            f"{values.size}"
        )
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        p = int(bad[0])
        raise ValueError(
            f"ratings contain {bad.size} non-finite values (NaN or inf); the first is "
            f"{values[p]} at (row {row[p]}, column {col[p]}). Drop or impute them before fitting."
        )
    linear = row * shape[1] + col
    order = np.argsort(linear, kind="stable")
    linear = linear[order]
    dup = np.flatnonzero(linear[1:] == linear[:-1])
    if dup.size:
        if not sum_duplicates:
            p = order[dup[0]]
            raise ValueError(
                f"ratings contain {dup.size} duplicate (row, column) entries; the first is "
                f"(row {row[p]}, column {col[p]}). Pass sum_duplicates=True to add them up, or "
                "deduplicate the input."
            )
        first = np.concatenate([[True], linear[1:] != linear[:-1]])
        group = np.cumsum(first) - 1
        summed = np.bincount(group, weights=values[order])
        keep = order[first]
        row, col, values = row[keep], col[keep], summed
    return row, col, values, shape


def _is_regular(sizes):
    return len(sizes) <= 1 or (len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0])


def _resolve_chunks(chunks, shape, nnz):
    if isinstance(chunks, str) or isinstance(chunks, numbers.Integral):
        chunks = (chunks, chunks)
    if len(chunks) != 2:
        raise ValueError(f"chunks must be 'auto', an int or a pair; got {chunks!r}")
    out = []
    for c, size in zip(chunks, shape):
        if isinstance(c, tuple) and c and _is_regular(c):
            c = c[0]  # a regular dask chunking, e.g. another array's .chunks
        if c == "auto" or c is None:
            blocks = max(2, math.ceil(nnz / TARGET_BLOCK_NNZ))
            c = math.ceil(size / min(blocks, size))
        elif not isinstance(c, numbers.Integral) or c < 1:
            raise ValueError(
                f"chunk sizes must be positive ints or 'auto'; got {c!r}. Irregular chunks "
                "are not supported because factor chunks equal the row blocks."
            )
        out.append(int(min(c, size)))
    return tuple(out)


# ------------------------------------------------------------------ block building
def _blocked_array(row, col, values, shape, chunk, prefix):
    """A dask array whose blocks are sorted ``sparse.COO`` pieces of (row, col, values)."""
    n, m = shape
    rc, cc = chunk
    nrb, ncb = math.ceil(n / rc), math.ceil(m / cc)
    rb, cb = row // rc, col // cc
    order = np.lexsort((col, row, cb, rb))
    counts = np.bincount(rb * ncb + cb, minlength=nrb * ncb)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    name = f"{prefix}-{dask.base.tokenize(row, col, values, shape, chunk)}"
    graph = {}
    for i in range(nrb):
        for j in range(ncb):
            sel = order[bounds[i * ncb + j] : bounds[i * ncb + j + 1]]
            bshape = (min(rc, n - i * rc), min(cc, m - j * cc))
            coords = np.stack([row[sel] - i * rc, col[sel] - j * cc])
            graph[(name, i, j)] = sparse.COO(
                coords, values[sel], shape=bshape, has_duplicates=False, sorted=True,
                prune=False, fill_value=0.0,
            )
    chunks = (_sizes(n, rc), _sizes(m, cc))
    return da.Array(graph, name, chunks, meta=_sparse_meta())


def _sizes(n, c):
    return tuple(min(c, n - s) for s in range(0, n, c))


def _normalise_block(block):
    """A block of a user's dask array as a sorted float64 ``sparse.COO``, values checked."""
    if scipy.sparse.issparse(block):
        block = sparse.COO.from_scipy_sparse(block)
    elif isinstance(block, np.ndarray):
        raise TypeError("a dask array of ratings must have sparse blocks, not numpy blocks")
    elif not isinstance(block, sparse.COO):
        block = block.tocoo()
    if block.fill_value != 0:
        raise ValueError(f"a ratings block has fill_value={block.fill_value!r}; it must be 0")
    data = np.asarray(block.data, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        raise ValueError(
            f"ratings contain {bad.size} non-finite values (NaN or inf) in a block of shape "
            f"{block.shape}; the first is {data[bad[0]]}. Drop or impute them before fitting."
        )
    return sparse.COO(
        block.coords.astype(np.int64), data, shape=block.shape, has_duplicates=False,
        prune=False, fill_value=0.0,
    )


def _block_nnz(block):
    return np.full((1, 1), block.nnz, dtype=np.int64)
