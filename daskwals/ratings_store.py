"""Ratings on disk: a zarr (v3) store holding A in both orientations, block by block.

Layout of a store at ``path`` (a directory)::

    zarr.json          group; attrs["daskwals_ratings"] = {format_version, complete,
                       shape, chunks, nnz, fields (the value fields stored), row_ids and
                       col_ids (kind of the id maps: "str", "int", "float" or null when
                       the ids are the indices), timestamp_kind, store_id, source}
    rows/              A, cut into blocks (i, j) of chunks = (rows_per_block, cols_per_block)
      offsets          int64 (n_row_blocks·n_col_blocks + 1,): block (i, j) is the entry
                       range offsets[k]:offsets[k+1], k = i·n_col_blocks + j
      row, col         int32 (nnz,): block-local coordinates, sorted row-major in a block
      value            float (nnz,): the stored ratings
      weight           float (nnz,), optional: per-entry weights
      timestamp        int64 or float64 (nnz,), optional (int64 ns since the epoch, UTC,
                       for datetime input; as given for numeric input)
    cols/              Aᵀ in the same layout: block (j, i) of Aᵀ at k = j·n_row_blocks + i
    row_ids, col_ids   (n,), (m,): the original ids (strings or ints), sorted; position i
                       holds the id of row (column) i

Blocks are contiguous ranges of flat 1-d arrays (zarr arrays need regular chunks, blocks
do not have equal sizes). Entry arrays are chunked near the mean block size, so reading
one block reads only the few chunks that overlap it. Each orientation is written
sequentially, a whole chunk at a time.

A store is built in a temporary sibling directory (``.<name>.partial-<id>``), marked
complete in its attributes and only then renamed to ``path``; :func:`open_ratings`
refuses a store that is not marked complete.

Memory of :func:`ingest`, for input of any size: pass 1 reads one partition per thread
(validation plus the partition's unique ids) and keeps the unique ids; pass 2 reads one
partition per thread again, maps ids to indices, sorts it by block and appends it to
raw spill files (about 16 B per entry on disk, more with weights and timestamps); the
write pass holds one block plus one entry chunk. The id maps (n + m ids; strings as
Arrow arrays) and the block index (24 B per partition and block pair) are held
throughout. The read passes run on the current dask scheduler (threads by default;
with a distributed cluster the store's directory must be shared with the workers,
which write the spill files); the write pass runs in the calling process.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import dask
import dask.array as da
import numpy as np
import sparse

from . import _ratings_format as fmt
from ._blockops import merge_by_row
from ._synthetic_blocks import PlantedBlocks
from .cluster import check_store_reachable
from .ratings import Ratings, _resolve_chunks, _sizes

__all__ = ["ingest", "open_ratings", "read_block", "read_metadata", "write_synthetic"]

logger = logging.getLogger(__name__)

_VALUE_FIELDS = ("value", "weight", "timestamp")


# ---------------------------------------------------------------------- reading
def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of the ratings store at ``path`` (shape, chunks, nnz, fields, ...).

    Raises FileNotFoundError when there is no store, ValueError when it is incomplete or
    newer than this daskwals.
    """
    return fmt.read_meta(path)


def open_ratings(path: str | os.PathLike, *, field: str = "value", load_ids: bool = True
                 ) -> Ratings:
    """Open a ratings store as a lazy :class:`daskwals.Ratings`.

    Opening reads the metadata, the block offsets and (by default) the id maps; every
    block of ``rows`` and ``cols`` is read from disk by its own task when computed.

    Parameters
    ----------
    path : str or os.PathLike
        The store, written by :func:`ingest` or :func:`write_synthetic`.
    field : {"value", "weight", "timestamp"}
        Which stored field becomes the matrix values (as float64); the weights or
        timestamps of a store give a matrix with the same stored entries.
    load_ids : bool
        Load the original ids into ``row_ids`` / ``col_ids``.

    Returns
    -------
    Ratings
        With ``in_memory=False``, ``nnz`` known and the store's chunking.
    """
    path = os.path.abspath(os.fspath(path))
    meta = fmt.read_meta(path)
    if field not in meta["fields"] or field not in _VALUE_FIELDS:
        stored = [f for f in meta["fields"] if f in _VALUE_FIELDS]
        raise ValueError(f"field must be one of the store's value fields {stored}; got {field!r}")
    (n, m), (rc, cc) = meta["shape"], meta["chunks"]
    row_chunks, col_chunks = _sizes(n, rc), _sizes(m, cc)
    token = dask.base.tokenize(path, meta["store_id"], field)
    offsets = {o: fmt.read_offsets(path, o) for o in fmt.ORIENTATIONS}
    rows = _lazy_blocks(path, "rows", field, offsets["rows"], (row_chunks, col_chunks),
                        f"ratings-store-rows-{token}")
    cols = _lazy_blocks(path, "cols", field, offsets["cols"], (col_chunks, row_chunks),
                        f"ratings-store-cols-{token}")
    row_ids = fmt.read_ids(path, "row_ids") if load_ids and meta["row_ids"] else None
    col_ids = fmt.read_ids(path, "col_ids") if load_ids and meta["col_ids"] else None
    source = StoreSource(path, field, (row_chunks, col_chunks), offsets)
    return Ratings(rows, cols, nnz=meta["nnz"], row_ids=row_ids, col_ids=col_ids,
                   in_memory=False, source=source)


def read_block(path: str | os.PathLike, orientation: str, i: int, j: int) -> dict:
    """One block's stored entries as NumPy arrays (block-local ``row``, ``col``, fields).

    ``orientation`` is "rows" (block (i, j) of A) or "cols" (block (i, j) of Aᵀ).
    """
    if orientation not in fmt.ORIENTATIONS:
        raise ValueError(f"orientation must be 'rows' or 'cols'; got {orientation!r}")
    meta = fmt.read_meta(path)
    chunks = meta["chunks"] if orientation == "rows" else meta["chunks"][::-1]
    shape = meta["shape"] if orientation == "rows" else meta["shape"][::-1]
    nb = fmt.n_blocks(shape, chunks)
    if not (0 <= i < nb[0] and 0 <= j < nb[1]):
        raise IndexError(f"block ({i}, {j}) is outside the {nb[0]}×{nb[1]} blocks of {orientation}")
    offsets = fmt.read_offsets(path, orientation)
    k = i * nb[1] + j
    return fmt.read_entries(path, orientation, int(offsets[k]), int(offsets[k + 1]),
                            ["row", "col", *meta["fields"]])


def _lazy_blocks(path, orientation, field, offsets, chunks, name):
    """One orientation as a dask array whose tasks each read one block.

    Built with ``da.from_array`` over :class:`_StoredBlocks`, so the graph stays a single
    lazy layer (a store with millions of blocks costs nothing until blocks are used).
    """
    shape = (sum(chunks[0]), sum(chunks[1]))
    blocks = _StoredBlocks(path, orientation, field, offsets, chunks, shape)
    return da.from_array(blocks, chunks=chunks, name=name, asarray=False, fancy=False,
                         meta=sparse.COO.from_numpy(np.empty((0, 0))))


class _StoredBlocks:
    """Array-like view of one stored orientation: indexing one block reads it."""

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, path, orientation, field, offsets, chunks, shape):
        self.path, self.orientation, self.field = path, orientation, field
        self.offsets = offsets
        self.chunks = chunks
        self.shape = shape
        self._starts = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]

    def __getitem__(self, key):
        i, j = (self._block(axis, k) for axis, k in enumerate(key))
        k = i * len(self.chunks[1]) + j
        return _read_block(self.path, self.orientation, self.field, int(self.offsets[k]),
                           int(self.offsets[k + 1]), (self.chunks[0][i], self.chunks[1][j]))

    def _block(self, axis, sl):
        starts = self._starts[axis]
        b = int(np.searchsorted(starts, sl.start, side="right")) - 1
        if sl.start != starts[b] or sl.stop != starts[b + 1] or sl.step not in (None, 1):
            raise IndexError(f"ratings store blocks are read whole; got {sl} on axis {axis}")
        return b


class StoreSource:
    """Where the blocks of a stored orientation lie: lets one task read several blocks.

    The blocks of one row block are consecutive on disk (block (i, j) is entry range
    ``offsets[i·n_col_blocks + j]`` onwards), so row block i's column blocks j0:j1 are
    one contiguous range: :meth:`block_range` describes it without reading anything.
    """

    def __init__(self, path, field, chunks, offsets, orientation="rows"):
        self.path = path
        self.field = field
        self.chunks = chunks  # (row block sizes, column block sizes) of this orientation
        self.offsets = offsets  # {"rows": ..., "cols": ...}
        self.orientation = orientation

    @property
    def T(self):
        """The same store, read in the other orientation."""
        other = "cols" if self.orientation == "rows" else "rows"
        return StoreSource(self.path, self.field, self.chunks[::-1], self.offsets, other)

    def block_range(self, i, j0, j1):
        """A :class:`BlockRange` for row block ``i`` and column blocks ``j0:j1``."""
        k = i * len(self.chunks[1])
        bounds = self.offsets[self.orientation][k + j0 : k + j1 + 1]
        counts = np.diff(bounds)
        counts = counts.astype(np.min_scalar_type(int(counts.max(initial=0))))
        return BlockRange(self.path, self.orientation, self.field, int(bounds[0]), counts,
                          int(self.chunks[1][0]),
                          (int(self.chunks[0][i]), int(sum(self.chunks[1][j0:j1]))))


class BlockRange:
    """Row block i, column blocks j0:j1 of a stored orientation; :meth:`load` reads it.

    Small enough to travel in every task of a sweep: the first entry, each block's entry
    count (in the smallest unsigned type that holds them) and the column block width
    (every column block but the store's last has it, so block b starts at column b·width).
    """

    def __init__(self, path, orientation, field, start, counts, width, shape):
        self.path, self.orientation, self.field = path, orientation, field
        self.start, self.counts, self.width, self.shape = start, counts, width, shape

    def load(self):
        """``(rows, cols, data)``: int64 range-local coordinates sorted by row, float64."""
        stop = self.start + int(self.counts.sum(dtype=np.int64))
        if stop == self.start:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        e = fmt.read_entries(self.path, self.orientation, self.start, stop,
                             ["row", "col", self.field])
        first_col = np.arange(self.counts.size, dtype=np.int64) * self.width
        cols = e["col"].astype(np.int64) + np.repeat(first_col, self.counts)
        return merge_by_row(e["row"], cols, e[self.field], self.shape[0])


def _read_block(path, orientation, field, start, stop, shape):
    """Task: one block as a row-sorted float64 ``sparse.COO`` with block-local coordinates."""
    if start == stop:
        coords, data = np.empty((2, 0), dtype=np.int64), np.empty(0)
    else:
        e = fmt.read_entries(path, orientation, start, stop, ["row", "col", field])
        coords = np.stack([e["row"].astype(np.int64), e["col"].astype(np.int64)])
        data = e[field].astype(np.float64)
    return sparse.COO(coords, data, shape=shape, has_duplicates=False, sorted=True,
                      prune=False, fill_value=0.0)


# ---------------------------------------------------------------------- ingest
def ingest(
    source, store_path: str | os.PathLike, *, user_col: str = "user", item_col: str = "item",
    rating_col: str = "rating", weight_col: str | None = None,
    timestamp_col: str | None = None, chunks="auto", sep: str = ",",
    overwrite: bool = False, sum_duplicates: bool = False, dtype="float64",
    blocksize="64MB", file_format: str | None = None, read_kwargs: dict | None = None,
) -> dict:
    """Write ratings from a table to a ratings store, never loading the table whole.

    Ids of any type (strings or ints) are mapped to contiguous indices in sorted order,
    so the mapping is deterministic. The input is read twice (validation and ids, then
    routing into blocks); see the module docstring for the memory this takes.

    Parameters
    ----------
    source : str, os.PathLike, list, pandas.DataFrame or dask.dataframe.DataFrame
        A CSV path or glob (or a list of them), a parquet file or directory, or a frame.
    store_path : str or os.PathLike
        The store directory to create (a local or shared file system path).
    user_col, item_col, rating_col : str
        Columns of the row ids, the column ids and the ratings (any numbers).
    weight_col, timestamp_col : str, optional
        Per-entry weights (finite, ≥ 0) and timestamps (numbers, datetimes or ISO 8601
        strings), stored alongside the ratings.
    chunks : "auto", int or (rows_per_block, cols_per_block)
        Block sizes; "auto" aims at about 2e6 entries per block.
    sep : str
        CSV field separator.
    overwrite : bool
        Replace an existing ratings store at ``store_path``.
    sum_duplicates : bool
        Add up repeated (user, item) pairs (and their weights, keeping the latest
        timestamp) instead of refusing them.
    dtype : str
        Storage type of ratings and weights ("float64" or "float32").
    blocksize : str or int
        CSV bytes per partition (the unit of memory of the two read passes).
    file_format : {"csv", "parquet"}, optional
        Overrides the guess from the path (directories and ``*.parquet`` are parquet).
    read_kwargs : dict, optional
        Passed on to ``dask.dataframe.read_csv`` / ``read_parquet``.

    Returns
    -------
    dict
        ``path``, ``shape``, ``chunks``, ``nnz``, ``blocks``, ``duplicates_summed``,
        ``input_rows`` and ``seconds``.

    Raises
    ------
    ValueError
        For missing ids, non-numeric or non-finite ratings, bad weights or timestamps,
        or duplicates (unless ``sum_duplicates``); nothing is left at ``store_path``.
    """
    from . import _ingest_passes as passes  # pandas and pyarrow: the "dataframe" extra

    t0 = time.perf_counter()
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype}")
    check_store_reachable(store_path)  # workers write spill files into the new store
    cols = passes.Columns(user_col, item_col, rating_col, weight_col, timestamp_col)
    reader = _SourceReader(source, cols, sep, blocksize, file_format, read_kwargs)
    ddf = reader.frame()
    if timestamp_col is not None:
        cols = passes.Columns(user_col, item_col, rating_col, weight_col, timestamp_col,
                              passes.timestamp_kind(ddf.dtypes[timestamp_col]))
    with fmt.StoreBuilder(store_path, overwrite=overwrite) as builder:
        parts = ddf.to_delayed()
        logger.info("ingest pass 1/3: validating %d partitions and collecting ids", len(parts))
        try:
            users, items, reports = _scan(parts, cols)
        except ValueError as exc:
            # a CSV value that does not parse as a number: find it and say where it is
            diagnosis = reader.diagnose(cols)
            if diagnosis:
                raise ValueError(diagnosis) from exc
            raise
        problem = passes.describe_problems(reports, cols)
        if problem:
            raise ValueError(problem)
        n_input = sum(r["rows"] for r in reports)
        if n_input == 0:
            raise ValueError(f"the input {_describe(source)} has no rows")
        shape = (len(users), len(items))
        chunk = _resolve_chunks(chunks, shape, n_input)
        nb = fmt.n_blocks(shape, chunk)
        fields = {"row": fmt.index_dtype_for(chunk), "col": fmt.index_dtype_for(chunk),
                  "value": dtype}
        if weight_col is not None:
            fields["weight"] = dtype
        if timestamp_col is not None:
            fields["timestamp"] = np.float64 if cols.timestamp_kind == "float" else np.int64

        logger.info("ingest pass 2/3: routing %d entries into %d×%d blocks", n_input, *nb)
        spill = builder.scratch("spill")
        user_ids, item_ids = dask.delayed(users), dask.delayed(items)  # one key each
        results = dask.compute(*[
            dask.delayed(passes.spill_partition)(p, k, cols, user_ids, item_ids, chunk,
                                                 nb[1], fields, spill)
            for k, p in enumerate(parts)
        ])
        pointer, pieces = _block_directory(results, nb[0] * nb[1])

        logger.info("ingest pass 3/3: writing blocks")
        entry_chunk = fmt.entry_chunk_for(n_input, nb[0] * nb[1])
        dup = {"count": 0, "example": None}

        def blocks():
            for k in range(nb[0] * nb[1]):
                entries = passes.gather_block(spill, pieces[pointer[k]:pointer[k + 1]], fields)
                entries, n_dup, first = passes.sort_block(entries, sum_duplicates)
                if n_dup and dup["example"] is None:
                    i, j = divmod(k, nb[1])
                    r, c = entries["row"][first], entries["col"][first]
                    dup["example"] = (passes.id_at(users, i * chunk[0] + r),
                                      passes.id_at(items, j * chunk[1] + c))
                dup["count"] += n_dup
                # after a refused duplicate the store is abandoned: only keep counting
                yield None if dup["count"] and not sum_duplicates else entries

        offsets = builder.write_orientation("rows", blocks(), fields, entry_chunk)
        if dup["count"] and not sum_duplicates:
            user, item = dup["example"]
            raise ValueError(
                f"the input has {dup['count']} duplicate ({user_col}, {item_col}) entries; "
                f"the first is ({user!r}, {item!r}). Pass sum_duplicates=True to add them "
                f"up, or deduplicate the input (e.g. df.drop_duplicates([{user_col!r}, "
                f"{item_col!r}]))."
            )
        builder.transpose_rows(offsets, nb, fields, entry_chunk)
        nnz = int(offsets[-1])
        meta = {
            "shape": list(shape), "chunks": list(chunk), "nnz": nnz,
            "fields": [f for f in fields if f in _VALUE_FIELDS],
            "row_ids": builder.write_ids("row_ids", users),
            "col_ids": builder.write_ids("col_ids", items),
            "timestamp_kind": cols.timestamp_kind, "store_id": uuid.uuid4().hex,
            "source": {"kind": "ingest", "input": _describe(source), "input_rows": n_input,
                       "duplicates_summed": dup["count"], "columns": cols.names},
        }
        path = builder.commit(meta)
    summary = {"path": path, "shape": shape, "chunks": chunk, "nnz": nnz, "blocks": nb,
               "duplicates_summed": dup["count"], "input_rows": n_input,
               "seconds": time.perf_counter() - t0}
    logger.info("ingested %s", summary)
    return summary


class _SourceReader:
    """Turns the ``source`` argument of :func:`ingest` into a dask DataFrame."""

    def __init__(self, source, cols, sep, blocksize, file_format, read_kwargs):
        self.source, self.cols, self.sep, self.blocksize = source, cols, sep, blocksize
        self.read_kwargs = dict(read_kwargs or {})
        self.format = file_format or _guess_format(source)
        if self.format not in ("csv", "parquet", "frame"):
            raise ValueError(f"file_format must be 'csv' or 'parquet'; got {self.format!r}")

    def frame(self, numeric_as_text=False):
        import dask.dataframe as dd
        import pandas as pd

        names = self.cols.names
        if self.format == "frame":
            df = self.source
            _check_columns(list(df.columns), names)
            if isinstance(df, pd.DataFrame):
                return dd.from_pandas(df[names], chunksize=1 << 20, sort=False)
            return df[names]
        if self.format == "parquet":
            ddf = dd.read_parquet(self.source, **self.read_kwargs)
            _check_columns(list(ddf.columns), names)
            return ddf[names]
        kwargs = dict(self.read_kwargs)
        numeric = [c for c in (self.cols.rating, self.cols.weight) if c is not None]
        # ratings are read as float64 (partitions must agree on dtypes); when a value
        # does not parse, diagnose() re-reads them as text to find and report it
        types = {c: (object if numeric_as_text else "float64") for c in numeric}
        given = kwargs.get("dtype", {})
        kwargs["dtype"] = {**types, **given} if isinstance(given, dict) else given
        kwargs.setdefault("blocksize", self.blocksize)
        ddf = dd.read_csv(self.source, sep=self.sep, usecols=names, **kwargs)
        _check_columns(list(ddf.columns), names)
        return ddf[names]

    def diagnose(self, cols):
        """The problems found when numbers are read as text (CSV only), or None."""
        from . import _ingest_passes as passes

        if self.format != "csv":
            return None
        try:
            reports = dask.compute(*[
                dask.delayed(passes.scan_partition, nout=3)(p, cols)[2]
                for p in self.frame(numeric_as_text=True).to_delayed()
            ])
        except Exception:
            return None
        return passes.describe_problems(reports, cols)


def _guess_format(source):
    if hasattr(source, "columns") and (hasattr(source, "iloc") or hasattr(source, "to_delayed")):
        return "frame"
    first = source[0] if isinstance(source, (list, tuple)) and source else source
    if not isinstance(first, (str, os.PathLike)):
        raise TypeError(
            f"source must be a CSV or parquet path, a list of paths, a pandas DataFrame or a "
            f"dask DataFrame; got {type(source).__name__}"
        )
    first = os.fspath(first)
    if os.path.isdir(first) or first.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    return "csv"


def _check_columns(available, wanted):
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(
            f"the input has no column(s) {missing}; its columns are {available}. Pass "
            "user_col=, item_col=, rating_col= (and weight_col=, timestamp_col=) to name them."
        )


def _describe(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (list, tuple)):
        return [os.fspath(s) for s in source]
    return f"{type(source).__module__}.{type(source).__name__}"


def _scan(parts, cols, split_every=8):
    """Pass 1: validation reports of all partitions and the sorted unique ids."""
    from . import _ingest_passes as passes

    scans = [dask.delayed(passes.scan_partition, nout=3)(p, cols) for p in parts]
    trees = []
    for position, column in ((0, cols.user), (1, cols.item)):
        level = [s[position] for s in scans]
        while len(level) > 1:
            level = [dask.delayed(passes.merge_unique)(column, *level[g:g + split_every])
                     for g in range(0, len(level), split_every)]
        trees.append(dask.delayed(passes.merge_unique)(column, *level))
    users, items, reports = dask.compute(trees[0], trees[1], [s[2] for s in scans])
    return users, items, reports


def _block_directory(results, n_blocks):
    """Where each block's pieces are in the spill files.

    Returns ``pointer`` (n_blocks + 1) and ``pieces``, an (n_pieces, 3) int64 array of
    (partition, start, stop) rows sorted by block then partition: block k's pieces are
    rows ``pointer[k]:pointer[k + 1]``. 24 B per (partition, block) pair present.
    """
    blocks, pieces = [], []
    for part, block_ids, starts, n in results:
        stops = np.r_[starts[1:], n] if starts.size else starts
        blocks.append(block_ids)
        pieces.append(np.stack([np.full(starts.size, part), starts, stops], axis=1))
    blocks = np.concatenate(blocks)
    pieces = np.concatenate(pieces).astype(np.int64)
    order = np.lexsort((pieces[:, 0], blocks))
    pointer = np.searchsorted(blocks[order], np.arange(n_blocks + 1))
    return pointer, pieces[order]


# ---------------------------------------------------------------------- synthetic
def _prefetch(function, items):
    """``map(function, items)`` with the next item computed on a thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(function, items[0]) if items else None
        for k in range(len(items)):
            result = pending.result()
            pending = pool.submit(function, items[k + 1]) if k + 1 < len(items) else None
            yield result


def write_synthetic(
    store_path: str | os.PathLike, n_users: int, n_items: int, nnz_target: int, *,
    rank: int = 16, seed: int = 0, chunks="auto", popularity_exponent: float = 0.8,
    activity_sigma: float = 1.0, noise: float = 0.1, implicit: bool = False,
    dtype="float32", overwrite: bool = False,
) -> dict:
    """Write a planted low-rank ratings matrix to a store, one block at a time.

    For benchmarks on matrices larger than memory: memory is two row blocks' entries
    (the next is generated while one is written) plus 16 + 4·rank bytes per item. Item popularity follows a power law, user
    activity is log-normal, values are ``p_u · q_v`` plus Gaussian noise (or 1.0 when
    ``implicit``); see :mod:`daskwals._synthetic_blocks` for the exact model. The same
    arguments give the same store; the expected nnz is ``nnz_target`` (at most half
    the matrix).

    Parameters
    ----------
    store_path : str or os.PathLike
        The store directory to create.
    n_users, n_items : int
        Shape of the matrix.
    nnz_target : int
        Expected number of stored entries.
    rank : int
        Rank of the planted factors.
    seed : int
        Seed of every random draw.
    chunks : "auto", int or (rows_per_block, cols_per_block)
        Block sizes.
    popularity_exponent, activity_sigma, noise : float
        Power-law exponent of item popularity, log-sd of user activity, noise sd.
    implicit : bool
        Store 1.0 for every entry (implicit feedback) instead of planted values.
    dtype : str
        Storage type of the values.
    overwrite : bool
        Replace an existing ratings store at ``store_path``.

    Returns
    -------
    dict
        ``path``, ``shape``, ``chunks``, ``nnz``, ``blocks`` and ``seconds``.
    """
    t0 = time.perf_counter()
    shape = (int(n_users), int(n_items))
    if min(shape) < 1 or int(nnz_target) < 1 or int(nnz_target) > shape[0] * shape[1] / 2:
        raise ValueError(
            f"need n_users ≥ 1, n_items ≥ 1 and 1 ≤ nnz_target ≤ n_users·n_items / 2 (a "
            f"sparse matrix); got {n_users}, {n_items}, {nnz_target}"
        )
    chunk = _resolve_chunks(chunks, shape, int(nnz_target))
    nb = fmt.n_blocks(shape, chunk)
    planted = PlantedBlocks(shape, chunk, nnz_target, rank=rank, seed=seed,
                            popularity_exponent=popularity_exponent,
                            activity_sigma=activity_sigma, noise=noise, implicit=implicit)
    fields = {"row": fmt.index_dtype_for(chunk), "col": fmt.index_dtype_for(chunk),
              "value": np.dtype(dtype)}
    entry_chunk = fmt.entry_chunk_for(nnz_target, nb[0] * nb[1])
    blocks = (b for row_block in _prefetch(planted.row_block, range(nb[0])) for b in row_block)
    with fmt.StoreBuilder(store_path, overwrite=overwrite) as builder:
        offsets = builder.write_orientation("rows", blocks, fields, entry_chunk)
        builder.transpose_rows(offsets, nb, fields, entry_chunk)
        nnz = int(offsets[-1])
        params = {"n_users": shape[0], "n_items": shape[1], "nnz_target": int(nnz_target),
                  "rank": int(rank), "seed": int(seed),
                  "popularity_exponent": float(popularity_exponent),
                  "activity_sigma": float(activity_sigma), "noise": float(noise),
                  "implicit": bool(implicit)}
        meta = {"shape": list(shape), "chunks": list(chunk), "nnz": nnz, "fields": ["value"],
                "row_ids": None, "col_ids": None,  # ids are the indices themselves
                "timestamp_kind": None, "store_id": uuid.uuid4().hex,
                "source": {"kind": "synthetic", **params}}
        path = builder.commit(meta)
    summary = {"path": path, "shape": shape, "chunks": chunk, "nnz": nnz, "blocks": nb,
               "seconds": time.perf_counter() - t0}
    logger.info("wrote synthetic ratings %s", summary)
    return summary
