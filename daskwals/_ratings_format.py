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
# keep that read amplification to about 2-3x, and the bounds keep chunks neither tiny
# (per-chunk overhead) nor larger than a few MiB.
MIN_ENTRY_CHUNK = 1 << 12
MAX_ENTRY_CHUNK = 1 << 20
ID_CHUNK = 1 << 18


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
    ``chunk`` entries. Entries are buffered until a whole chunk is ready, so each zarr
    chunk is written once and completely (no read-modify-write), and memory is one
    block plus one chunk. :meth:`close` writes the partial last chunk and ``offsets``.
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
        if self._n_pending >= self.chunk:
            self._flush(final=False)

    def _flush(self, final):
        if self._n_pending == 0:
            return
        take = self._n_pending if final else (self._n_pending // self.chunk) * self.chunk
        stop = self._pos + take
        for name, arr in self.arrays.items():
            data = np.concatenate(self._pending[name])
            arr.resize((stop,))
            arr[self._pos : stop] = data[:take]
            self._pending[name] = [data[take:]] if take < data.size else []
        self._pos = stop
        self._n_pending -= take

    def close(self):
        """Flush the last entries and write ``offsets``; returns the offsets."""
        self._flush(final=True)
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

    def transpose_rows(self, rows_offsets, blocks, fields, chunk):
        """Write the column-major orientation (Aᵀ) from the row-major one.

        Block (j, i) of Aᵀ holds the entries of block (i, j) of A with row and column
        swapped, re-sorted row-major; blocks are read back one at a time.
        """
        nrb, ncb = blocks
        src = self.group["rows"]
        arrays = {name: src[name] for name in fields}

        def transposed():
            for j in range(ncb):
                for i in range(nrb):
                    k = i * ncb + j
                    start, stop = int(rows_offsets[k]), int(rows_offsets[k + 1])
                    if start == stop:
                        yield None
                        continue
                    e = {name: arr[start:stop] for name, arr in arrays.items()}
                    order = np.lexsort((e["row"], e["col"]))
                    out = {name: e[name][order] for name in fields}
                    out["row"], out["col"] = out["col"], out["row"]
                    yield out

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
