"""The on-disk format of a ratings store: creation, block writing and block reading.

The layout is described in :mod:`daskwals.ratings_store`; this module owns it. Nothing
here imports dask: it is plain zarr and NumPy, used by the ingest passes (in the client)
and by the block-reading tasks (on workers).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ATTR = "daskwals_ratings"
ORIENTATIONS = ("rows", "cols")

# Entries per chunk of the flat entry arrays. A block is a contiguous range of entries, so
# reading one block decompresses the chunks it overlaps; chunks near the mean block size
# keep that read amplification to about 2-3x. The bounds keep chunks neither small (zarr
# costs about a millisecond per chunk written or read, whatever its size: 4096-entry
# chunks made writing a 340M-entry store take most of an hour) nor larger than a few MiB.
# Sweeps read a row block's group of blocks at once, far more than one chunk.
MIN_ENTRY_CHUNK = 1 << 16
MAX_ENTRY_CHUNK = 1 << 20
ID_CHUNK = 1 << 18
# Entries buffered by EntryWriter before a write (rounded down to whole chunks).
FLUSH_ENTRIES = 1 << 20
# Entries per sequential read span and per spill group of StoreBuilder.transpose_rows.
TRANSPOSE_SPAN = 1 << 22


def entry_chunk_for(nnz, n_blocks):
    """A power-of-two entry chunk near the mean number of entries per block."""
    mean = max(1, int(nnz) // max(1, int(n_blocks)))
    chunk = 1 << max(0, mean.bit_length() - 1)
    return int(min(MAX_ENTRY_CHUNK, max(MIN_ENTRY_CHUNK, chunk)))


def index_dtype_for(chunks):
    """Block-local indices fit in int32 unless a block is wider than 2**31 - 1."""
    return np.dtype(np.int32 if max(chunks) < 2**31 else np.int64)


def n_blocks(shape, chunks):
    """Number of blocks along each axis for ``shape`` cut into ``chunks``."""
    return tuple(-(-int(s) // int(c)) for s, c in zip(shape, chunks))


# ---------------------------------------------------------------------- writing
class EntryWriter:
    """Append the blocks of one orientation, in block order, to flat zarr arrays.

    Every array (``row``, ``col`` and one per value field) is 1-d and chunked by
    ``chunk`` entries. Entries are buffered until at least ``FLUSH_ENTRIES`` (and whole
    chunks) are ready, so each zarr chunk is written once and completely (no
    read-modify-write) by few large writes, and memory is one block plus the buffer.
    The arrays grow by doubling (a resize rewrites metadata, so not once per write);
    :meth:`close` writes the partial last chunk, trims the arrays and writes ``offsets``.
    """

    def __init__(self, group, fields, chunk):
        self.group = group
        self.chunk = int(chunk)
        self.arrays = {
            name: group.create_array(
                name, shape=(0,), chunks=(self.chunk,), dtype=dtype, fill_value=0,
                dimension_names=["entry"],
            )
            for name, dtype in fields.items()
        }
        self._pending = {name: [] for name in self.arrays}
        self._n_pending = 0
        self._pos = 0
        self._capacity = 0
        self._flush_at = max(self.chunk, (FLUSH_ENTRIES // self.chunk) * self.chunk)
        self._counts = []

    def append(self, entries=None):
        """Append one block (a dict of equal-length arrays), or an empty block if None."""
        n = 0 if entries is None else len(entries["row"])
        self._counts.append(n)
        if n == 0:
            return
        for name, arr in self.arrays.items():
            self._pending[name].append(np.asarray(entries[name], dtype=arr.dtype))
        self._n_pending += n
        if self._n_pending >= self._flush_at:
            self._flush(final=False)

    def _flush(self, final):
        if self._n_pending == 0:
            return
        take = self._n_pending if final else (self._n_pending // self.chunk) * self.chunk
        stop = self._pos + take
        if stop > self._capacity:
            self._capacity = max(stop, 2 * self._capacity)
            for arr in self.arrays.values():
                arr.resize((self._capacity,))
        for name, arr in self.arrays.items():
            data = np.concatenate(self._pending[name])
            arr[self._pos : stop] = data[:take]
            self._pending[name] = [data[take:]] if take < data.size else []
        self._pos = stop
        self._n_pending -= take

    def close(self):
        """Flush the last entries and write ``offsets``; returns the offsets."""
        self._flush(final=True)
        if self._capacity != self._pos:
            for arr in self.arrays.values():
                arr.resize((self._pos,))
        offsets = np.zeros(len(self._counts) + 1, dtype=np.int64)
        np.cumsum(self._counts, out=offsets[1:])
        arr = self.group.create_array(
            "offsets", shape=offsets.shape, chunks=(min(offsets.size, 1 << 20),),
            dtype=np.int64, fill_value=0, dimension_names=["block"],
        )
        arr[...] = offsets
        return offsets


class StoreBuilder:
    """Build a ratings store in a temporary sibling directory and rename it into place.

    The store becomes visible at ``path`` only in :meth:`commit`, after its attributes
    were marked complete; an exception inside the ``with`` block removes the temporary
    directory. A process killed mid-way leaves a ``.<name>.partial-<id>`` sibling that
    never opens as a store and can be deleted.
    """

    def __init__(self, path, *, overwrite=False):
        self.path = Path(os.path.abspath(os.fspath(path)))
        _check_target(self.path, overwrite)
        self.overwrite = overwrite
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{uuid.uuid4().hex[:12]}")
        self.group = zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        self._scratch = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def scratch(self, name):
        """A scratch directory inside the temporary store, removed before the commit."""
        path = self.tmp / f"_scratch_{name}"
        path.mkdir()
        self._scratch.append(path)
        return path

    def write_orientation(self, orientation, blocks, fields, chunk):
        """Write the blocks yielded by ``blocks`` (dicts or None) in block order."""
        writer = EntryWriter(self.group.create_group(orientation), fields, chunk)
        for entries in blocks:
            writer.append(entries)
        return writer.close()

    def transpose_rows(self, rows_offsets, blocks, fields, chunk, *, span=None):
        """Write the column-major orientation (Aᵀ) from the row-major one.

        Block (j, i) of Aᵀ holds the entries of block (i, j) of A with row and column
        swapped, re-sorted row-major. The row-major entries are read in sequential spans
        of about ``span`` entries and appended to spill files, one per group of
        consecutive column blocks holding about ``span`` entries; each group is then
        sorted into Aᵀ's block order and written. Memory is one span plus one group
        (a single column block larger than ``span`` is a group of its own); every zarr
        read is a long sequential range, never one read per block.
        """
        span = int(span or TRANSPOSE_SPAN)
        nrb, ncb = blocks
        counts = np.diff(np.asarray(rows_offsets, dtype=np.int64)).reshape(nrb, ncb)
        group_of, starts = _spill_groups(counts.sum(axis=0), span)
        spill = _Spill(self.scratch("transpose"), len(starts) - 1, fields)
        src = self.group["rows"]
        for i0, i1 in _row_spans(counts.sum(axis=1), span):
            lo, hi = int(rows_offsets[i0 * ncb]), int(rows_offsets[i1 * ncb])
            if lo == hi:
                continue
            e = {name: src[name][lo:hi] for name in fields}
            block = np.repeat(np.arange(i0 * ncb, i1 * ncb, dtype=np.int64),
                              counts[i0:i1].ravel())
            e["i"], e["j"] = block // ncb, block % ncb
            spill.append(group_of[e["j"]], e)

        def transposed():
            for g in range(len(starts) - 1):
                j0, j1 = int(starts[g]), int(starts[g + 1])
                e = spill.load(g)
                # Aᵀ's block order (j, i), then row-major inside a block: (col, row) of A
                key = (e["j"].astype(np.int64) - j0) * nrb + e["i"]
                width = int(max(e["row"].max(initial=0), e["col"].max(initial=0))) + 1
                if (int(key.max(initial=0)) + 1) * width * width < 2**62:
                    order = np.argsort((key * width + e["col"]) * width + e["row"],
                                       kind="stable")
                else:
                    order = np.lexsort((e["row"], e["col"], key))
                per_block = np.bincount(key, minlength=(j1 - j0) * nrb)
                bounds = np.concatenate([[0], np.cumsum(per_block)])
                e = {name: e[name][order] for name in fields}
                e["row"], e["col"] = e["col"], e["row"]
                for b in range(per_block.size):
                    s, t = int(bounds[b]), int(bounds[b + 1])
                    yield {name: v[s:t] for name, v in e.items()} if t > s else None
                del e
                spill.drop(g)

        return self.write_orientation("cols", transposed(), fields, chunk)

    def write_ids(self, name, ids):
        """Store an id map (position i holds the id of index i); returns its kind.

        ``ids`` is a NumPy array of numbers or an Arrow array of strings; strings are
        converted one zarr chunk at a time, so Python objects never exist for all ids.
        """
        arrow = type(ids).__module__.startswith("pyarrow")  # no pyarrow import needed
        if arrow:
            kind, dtype = "str", str
        elif np.asarray(ids).dtype.kind in "iub":
            kind, dtype = "int", np.int64
        elif np.asarray(ids).dtype.kind == "f":
            kind, dtype = "float", np.float64
        else:
            kind, dtype = "str", str
        arr = self.group.create_array(
            name, shape=(len(ids),), chunks=(min(max(len(ids), 1), ID_CHUNK),), dtype=dtype,
            dimension_names=["index"],
        )
        for start in range(0, len(ids), ID_CHUNK):
            part = ids[start : start + ID_CHUNK]
            if arrow:
                part = part.to_numpy(zero_copy_only=False)
            arr[start : start + len(part)] = (
                np.asarray(part, dtype=object) if kind == "str" else np.asarray(part, dtype)
            )
        return kind

    def commit(self, meta):
        """Mark the store complete and move it to its path (replacing an old store)."""
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self.group.attrs[ATTR] = {**meta, "format_version": FORMAT_VERSION, "complete": True}
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("ratings store written to %s", self.path)
        return str(self.path)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _check_target(path, overwrite):
    if not path.exists():
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot create the ratings store {str(path)!r}: the directory "
                f"{str(path.parent)!r} does not exist"
            )
        return
    if not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already exists; pass overwrite=True to replace it or choose "
            "another path"
        )
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        is_store = ATTR in group.attrs
    except Exception:  # not a zarr group at all
        is_store = False
    if not is_store:
        raise FileExistsError(
            f"refusing to overwrite {str(path)!r}: it is not a daskwals ratings store. "
            "Remove it yourself or choose another path."
        )


def _row_spans(entries_per_row_block, span):
    """Consecutive row-block ranges [i0, i1) of about ``span`` entries (at least one block)."""
    out, i0, total = [], 0, 0
    for i, n in enumerate(entries_per_row_block):
        if total and total + n > span:
            out.append((i0, i))
            i0, total = i, 0
        total += int(n)
    out.append((i0, len(entries_per_row_block)))
    return out


def _spill_groups(entries_per_col_block, span):
    """Group consecutive column blocks into about ``span`` entries each.

    Returns ``(group_of, starts)``: the group of every column block, and the first
    column block of every group followed by the number of column blocks.
    """
    ranges = _row_spans(entries_per_col_block, span)
    starts = np.array([r[0] for r in ranges] + [len(entries_per_col_block)], dtype=np.int64)
    group_of = np.repeat(np.arange(len(ranges), dtype=np.int64), np.diff(starts))
    return group_of, starts


class _Spill:
    """Raw append-only files, one set per group, of the entries routed to that group."""

    def __init__(self, directory, n_groups, fields):
        self.directory = Path(directory)
        # block indices as int32: a store has far fewer than 2**31 blocks per axis
        self.dtypes = {**{name: np.dtype(dtype) for name, dtype in fields.items()},
                       "i": np.dtype(np.int32), "j": np.dtype(np.int32)}
        self.n_groups = n_groups

    def _file(self, g, name):
        return self.directory / f"{g}.{name}"

    def append(self, group, entries):
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(self.n_groups + 1))
        for g in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[g] : bounds[g + 1]]
            for name, dtype in self.dtypes.items():
                with open(self._file(g, name), "ab") as f:
                    f.write(np.ascontiguousarray(entries[name][sel], dtype=dtype).tobytes())

    def load(self, g):
        out = {}
        for name, dtype in self.dtypes.items():
            path = self._file(g, name)
            out[name] = np.fromfile(path, dtype=dtype) if path.exists() else np.empty(0, dtype)
        return out

    def drop(self, g):
        for name in self.dtypes:
            self._file(g, name).unlink(missing_ok=True)


# ---------------------------------------------------------------------- reading
def read_meta(path):
    """The validated metadata of the complete ratings store at ``path``."""
    path = os.fspath(path)
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        raise FileNotFoundError(f"no ratings store at {path!r}") from None
    meta = group.attrs.get(ATTR)
    if meta is None:
        raise FileNotFoundError(
            f"{path!r} is a zarr group but not a daskwals ratings store (no {ATTR!r} "
            "attribute); create one with daskwals.ingest or daskwals.write_synthetic"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"the ratings store at {path!r} has format version {version!r}, newer than this "
            f"daskwals supports ({FORMAT_VERSION}); upgrade daskwals to read it"
        )
    if meta.get("complete") is not True:
        raise ValueError(
            f"the ratings store at {path!r} is incomplete (its writer was interrupted); "
            "write it again with overwrite=True"
        )
    return dict(meta)


def read_entries(path, orientation, start, stop, fields):
    """Entries ``start:stop`` of one orientation: a dict of NumPy arrays per field."""
    group = zarr.open_group(os.fspath(path), path=orientation, mode="r", zarr_format=3)
    return {name: group[name][start:stop] for name in fields}


def read_offsets(path, orientation):
    """The block offsets of one orientation (length n_blocks + 1)."""
    group = zarr.open_group(os.fspath(path), path=orientation, mode="r", zarr_format=3)
    return group["offsets"][...]


def read_ids(path, name):
    """An id map as a NumPy array (object dtype for string ids)."""
    ids = zarr.open_group(os.fspath(path), mode="r", zarr_format=3)[name][...]
    return ids.astype(object) if ids.dtype.kind not in "iuf" else ids
