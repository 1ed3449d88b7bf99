"""FactorStore: the model's factors, weights, Gramians and metadata in a zarr (v3) group.

Layout of the group::

    zarr.json                    attrs["daskwals"]: format version, shape, rank, dtype,
                                 chunking, hyper-parameters, sweep counter, loss history
                                 and the *current* version of every versioned array
    row_factors/v000000 ...      U, n × k, chunked (row_chunk, k)
    col_factors/v000000 ...      V, m × k, chunked (col_chunk, k)
    row_gramian/v000000 ...      UᵀU, k × k float64, versioned with U
    col_gramian/v000000 ...      VᵀV, k × k float64, versioned with V
    row_weights, col_weights     R (n,) and C (m,) float64 (absent in plain ALS mode)

A sweep writes a *new* version of a factor, chunk by chunk (each task writes whole
chunks), and :meth:`FactorStore.commit` then switches the pointer in the group's
attributes, which zarr rewrites atomically. A sweep that dies before the commit leaves
the previous version current; its partial array is removed by the next sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time

import dask.array as da
import numpy as np
import zarr

try:  # POSIX advisory locks; elsewhere the writer lock is not enforced
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["FORMAT_VERSION", "FactorStore", "StoreLockedError", "writer_lock"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = "daskwals.lock"
# Attribute of arrays written with every chunk present (write_empty_chunks=True).
_COMPLETE = "daskwals_all_chunks"
_ATTR = "daskwals"
_AXES = {"row": "row", "col": "col"}


def _check_axis(axis):
    if axis not in _AXES:
        raise ValueError(f"axis must be 'row' or 'col'; got {axis!r}")
    return axis


class FactorStore:
    """A WALS model on disk (or any zarr store). Use :meth:`create` or :meth:`open`."""

    def __init__(self, group):
        self.group = group

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls, store, shape, n_components, *, row_chunk, col_chunk, dtype="float32",
        params=None, overwrite=False,
    ):
        """Create an empty model store.

        Parameters
        ----------
        store : str, os.PathLike, zarr store or None
            Where to write; None creates a temporary directory, removed at exit.
        shape : (int, int)
            (n_rows, n_cols) of the ratings.
        n_components : int
            The rank k.
        row_chunk, col_chunk : int
            Factor chunk sizes: equal to the ratings' row and column block sizes.
        dtype : str
            Storage precision of the factors ("float32" or "float64").
        params : dict
            JSON-serialisable hyper-parameters, kept in the attributes.
        overwrite : bool
            Replace an existing model at ``store``.
        """
        if store is None:
            # Removed at interpreter exit, not when this object dies: lazy arrays read
            # from the store (row_factors_, ...) may outlive the objects that made them.
            tmp = tempfile.mkdtemp(prefix="daskwals-")
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            store = os.path.join(tmp, "model.zarr")
        store = _normalise_path(store)
        if _is_local(store):
            group = _create_local(store, overwrite)
        else:
            if not overwrite:
                existing = _try_open(store)
                if existing is not None and _ATTR in existing.attrs:
                    raise FileExistsError(_exists_message(store))
            group = zarr.open_group(store, mode="w", zarr_format=3)
        n, m = (int(s) for s in shape)
        group.attrs[_ATTR] = {
            "format_version": FORMAT_VERSION,
            "shape": [n, m],
            "n_components": int(n_components),
            "dtype": np.dtype(dtype).name,
            "row_chunk": int(row_chunk),
            "col_chunk": int(col_chunk),
            "params": params or {},
            "sweeps": 0,
            "iterations": 0,
            "loss_history": [],
            "current": {},
            "next_version": 0,
        }
        return cls(group)

    @classmethod
    def open(cls, store, mode="r+"):
        """Open an existing model store (``mode="r"`` for read only).

        Raises FileNotFoundError where there is no model, and ValueError for a store
        of a newer format or a damaged one: unreadable metadata, a current array that is
        missing or has the wrong shape, or a truncated chunk file.
        """
        store = _normalise_path(store)
        try:
            group = _try_open(store, mode)
        except (ValueError, TypeError, KeyError) as err:  # unparsable zarr.json
            raise _damaged(store, f"its group metadata cannot be read ({err!r})") from err
        if group is None and _looks_like_a_model(store):
            raise _damaged(store, "its group metadata (zarr.json) is missing or invalid")
        if group is None or _ATTR not in group.attrs:
            raise FileNotFoundError(f"no daskwals model store at {store!r}")
        meta = group.attrs[_ATTR]
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ValueError(
                f"the store at {store!r} has format version {version!r}, newer than this "
                f"daskwals supports ({FORMAT_VERSION}); upgrade daskwals to read it"
            )
        _check_intact(store, group, meta)
        return cls(group)

    # ------------------------------------------------------------------ metadata
    def _fresh(self):
        # A zarr Group keeps its attributes in memory; another process (a worker's
        # commit, say) may have rewritten them, so re-read the group's metadata.
        return zarr.open_group(self.group.store, path=self.group.path, mode="r",
                               zarr_format=3)

    @property
    def meta(self):
        """The store's metadata dictionary (a fresh read of the attributes)."""
        return dict(self._fresh().attrs[_ATTR])

    def _update_meta(self, **changes):
        meta = self.meta
        meta.update(changes)
        self.group.attrs[_ATTR] = meta
        return meta

    @property
    def shape(self):
        return tuple(self.meta["shape"])

    @property
    def n_components(self):
        return self.meta["n_components"]

    @property
    def dtype(self):
        return np.dtype(self.meta["dtype"])

    @property
    def path(self):
        """A string naming the store (a path for local stores)."""
        store = self.group.store
        root = getattr(store, "root", None)
        return str(root) if root is not None else str(store)

    def chunk(self, axis):
        """Factor chunk size along ``axis`` ('row' or 'col')."""
        return self.meta[f"{_check_axis(axis)}_chunk"]

    def length(self, axis):
        return self.shape[0 if _check_axis(axis) == "row" else 1]

    # ------------------------------------------------------------------ factors
    def new_factor(self, axis, tag=None):
        """Create the next (not yet current) version of a factor; returns (name, array).

        ``tag`` (a short string) is appended to the version name, which keeps names
        unique when two writers read the same version counter at once.
        """
        axis = _check_axis(axis)
        meta = self.meta
        version = meta["next_version"]
        self._update_meta(next_version=version + 1)
        name = f"{axis}_factors/v{version:06d}" + (f"-{tag}" if tag else "")
        array = self.group.create_array(
            name,
            shape=(self.length(axis), meta["n_components"]),
            chunks=(meta[f"{axis}_chunk"], meta["n_components"]),
            dtype=meta["dtype"],
            compressors=None,
            fill_value=0,
            overwrite=True,
            dimension_names=[f"{axis}", "component"],
            # every chunk gets a file, zeros too, so a missing file means damage
            config={"write_empty_chunks": True},
            attributes={_COMPLETE: True},
        )
        return name, array

    def factor_array(self, axis, name=None):
        """The zarr array of the current (or the named) version of a factor."""
        axis = _check_axis(axis)
        if name is None:
            name = self.meta["current"].get(f"{axis}_factors")
            if name is None:
                raise RuntimeError(
                    f"the store has no {axis} factors yet; initialise or fit the model first"
                )
        return self.group[name]

    def factor(self, axis, name=None):
        """The current factor as a dask array chunked like the ratings blocks."""
        return da.from_zarr(self.factor_array(axis, name))

    def gramian(self, axis):
        """The Gramian (XᵀX, float64) stored with the current factor, or None."""
        name = self.meta["current"].get(f"{_check_axis(axis)}_gramian")
        return None if name is None else np.asarray(self.group[name][...])

    def has(self, axis):
        return f"{_check_axis(axis)}_factors" in self.meta["current"]

    def commit(self, updates, *, sweeps=0, loss=None, extra=None):
        """Make new factor versions (with their Gramians) current in one atomic step.

        ``updates`` is a sequence of ``(axis, name, gramian)``: the factor version
        written by :meth:`new_factor` and its Gramian XᵀX. ``sweeps`` is added to the
        sweep counter; ``loss`` is appended to the loss history (completing an
        iteration). Older versions are deleted afterwards.
        """
        current = dict(self.meta["current"])
        keep = set()
        for axis, name, gramian in updates:
            axis = _check_axis(axis)
            gname = f"{axis}_gramian/{name.rsplit('/', 1)[1]}"
            garr = self.group.create_array(
                gname, shape=np.shape(gramian), chunks=np.shape(gramian), dtype="float64",
                compressors=None, overwrite=True,
            )
            garr[...] = np.asarray(gramian, dtype=np.float64)
            current[f"{axis}_factors"] = name
            current[f"{axis}_gramian"] = gname
            keep |= {name, gname}
        meta = self.meta
        changes = {"current": current, "sweeps": meta["sweeps"] + int(sweeps)}
        if loss is not None:
            changes["loss_history"] = [*meta["loss_history"], float(loss)]
            changes["iterations"] = meta["iterations"] + 1
        if extra:
            changes.update(extra)
        self._update_meta(**changes)
        for axis in {u[0] for u in updates}:
            self._remove_stale(axis, keep)
        return self.meta

    def _remove_stale(self, axis, keep):
        for kind in ("factors", "gramian"):
            parent = f"{axis}_{kind}"
            if parent not in self.group:
                continue
            for key in list(self.group[parent].array_keys()):
                full = f"{parent}/{key}"
                if full not in keep:
                    del self.group[full]

    # ------------------------------------------------------------------ weights
    def write_weights(self, axis, weights):
        """Store R (axis='row') or C (axis='col'); None removes them (ALS mode)."""
        axis = _check_axis(axis)
        name = f"{axis}_weights"
        if weights is None:
            if name in self.group:
                del self.group[name]
            return None
        weights = np.asarray(weights, dtype=np.float64)
        arr = self.group.create_array(
            name, shape=weights.shape, chunks=(self.chunk(axis),), dtype="float64",
            compressors=None, overwrite=True, fill_value=0, dimension_names=[axis],
            config={"write_empty_chunks": True}, attributes={_COMPLETE: True},
        )
        arr[...] = weights
        return arr

    def write_ids(self, axis, ids):
        """Store the original ids of the rows (axis='row') or columns; None removes them."""
        name = f"{_check_axis(axis)}_ids"
        if ids is None:
            if name in self.group:
                del self.group[name]
            return
        ids = np.asarray(ids)
        numeric = ids.dtype.kind in "iu"
        arr = self.group.create_array(
            name, shape=ids.shape, chunks=(max(1, min(len(ids), 1_000_000)),),
            dtype=np.int64 if numeric else str, overwrite=True, dimension_names=[axis],
        )
        arr[...] = ids.astype(np.int64) if numeric else ids.astype(str).astype(object)

    def ids(self, axis):
        """The original ids of the rows or columns (NumPy), or None."""
        name = f"{_check_axis(axis)}_ids"
        if name not in self.group:
            return None
        ids = self.group[name][...]
        return ids if ids.dtype.kind in "iu" else ids.astype(object)

    def weights(self, axis):
        """R or C as a dask array chunked like the factor, or None in ALS mode."""
        name = f"{_check_axis(axis)}_weights"
        if name not in self.group:
            return None
        return da.from_zarr(self.group[name])

    # ------------------------------------------------------------------ writer lock
    def writer(self, *, break_lock=False):
        """Hold the store's single-writer lock for a ``with`` block (see :func:`writer_lock`)."""
        return writer_lock(self.path, break_lock=break_lock)

    @staticmethod
    def check_unlocked(store, *, break_lock=False):
        """Refuse (StoreLockedError) when a live writer holds the store at ``store``."""
        with writer_lock(store, break_lock=break_lock, create=False):
            pass

    def __repr__(self):
        meta = self.meta
        return (
            f"<FactorStore {self.path!r} shape={tuple(meta['shape'])} "
            f"k={meta['n_components']} sweeps={meta['sweeps']}>"
        )


class StoreLockedError(RuntimeError):
    """Another writer holds the model store."""


@contextlib.contextmanager
def writer_lock(store, *, break_lock=False, create=True):
    """Hold the single-writer lock of the model store at ``store`` (a local path).

    The lock is an advisory ``flock`` on the file ``daskwals.lock`` inside the store's
    directory, held for the duration of the ``with`` block: a second writer — another
    process, or another fit in this one — is refused with :class:`StoreLockedError`
    naming the holder; readers are never blocked. The operating system releases the
    lock when its holder dies, so a killed fit leaves no stale lock on a local disk.
    ``break_lock=True`` proceeds without the lock when another writer holds it (for a
    network file system whose locks outlive their holders: use it only when the other
    writer is certainly gone). ``create`` makes the directory if needed; without it a
    missing store is simply not locked. URLs and non-local stores are not locked.
    """
    store = _normalise_path(store)
    if not _is_local(store) or fcntl is None:
        logger.debug("the single-writer lock is not enforced on %r", store)
        yield None
        return
    if not os.path.isdir(store):
        if not create:
            yield None
            return
        os.makedirs(store, exist_ok=True)
    fd = _acquire(os.path.join(store, LOCK_NAME), break_lock)
    try:
        yield fd
    finally:
        _release(fd)


def _acquire(path, break_lock):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = _read_lock(fd)
        os.close(fd)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("since", 0)))
        holder = f"process {held.get('pid', '?')} on {held.get('host', '?')} since {since}"
        if break_lock:
            logger.warning("break_lock: writing %s although %s holds its lock", path, holder)
            return None
        raise StoreLockedError(
            f"the model store {os.path.dirname(path)!r} is being written by {holder}. Wait "
            "for it to finish. A dead writer's lock is released by the operating system; "
            "only if the other writer is certainly gone and the lock persists (some network "
            "file systems), pass break_lock=True (daskwals fit --break-lock). Reading the "
            "store is always allowed."
        ) from None
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    return fd


def _read_lock(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _release(fd):
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race)


def _is_local(store):
    return isinstance(store, str) and "://" not in store


def _exists_message(store):
    return (
        f"a daskwals model already exists at {store!r}; pass overwrite=True to replace it, "
        "or open it with FactorStore.open (or fit with resume=True) to continue or serve it"
    )


def _create_local(store, overwrite):
    """A new group in the local directory ``store``, never deleting anything but a model."""
    if os.path.exists(store) and not os.path.isdir(store):
        raise ValueError(f"store={store!r} is a file, not a directory; pass a directory path")
    contents = [c for c in os.listdir(store) if c != LOCK_NAME] if os.path.isdir(store) else []
    if contents:
        try:
            existing = _try_open(store)
            is_model = existing is not None and _ATTR in existing.attrs
        except (ValueError, TypeError, KeyError):
            is_model = False
        if not (is_model or _looks_like_a_model(store)):
            raise ValueError(
                f"store={store!r} exists and is not a daskwals model store; daskwals never "
                "deletes other data. Pass a new or empty directory."
            )
        if not overwrite:
            raise FileExistsError(_exists_message(store))
        for child in contents:
            full = os.path.join(store, child)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
    os.makedirs(store, exist_ok=True)
    return zarr.create_group(zarr.storage.LocalStore(store), zarr_format=3)


def _normalise_path(store):
    """Absolute local paths (workers may run elsewhere); URLs and store objects as given."""
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if isinstance(store, str) and "://" not in store:
        store = os.path.abspath(os.path.expanduser(store))
    return store


# ------------------------------------------------------------- damaged stores
_META_TYPES = {
    "format_version": int, "shape": list, "n_components": int, "dtype": str, "row_chunk": int,
    "col_chunk": int, "params": dict, "sweeps": int, "iterations": int, "loss_history": list,
    "current": dict, "next_version": int,
}


def _damaged(store, what):
    return ValueError(
        f"the model store at {store!r} is damaged: {what}. Restore it from a copy, or pass "
        "overwrite=True (and resume=False) to fit a new model there, which replaces it."
    )


def _looks_like_a_model(store):
    """A local directory holding a model's factor arrays, whatever its zarr.json says."""
    if not isinstance(store, str) or "://" in store:
        return False
    return any(os.path.isdir(os.path.join(store, name)) for name in ("row_factors", "col_factors"))


def _check_intact(store, group, meta):
    """Cheap checks (metadata and file sizes; no chunk is read) that the model is readable."""
    if not isinstance(meta, dict):
        raise _damaged(store, f"its {_ATTR!r} attribute is {type(meta).__name__}, not a dict")
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise _damaged(store, f"its metadata entry {key!r} is {meta.get(key)!r}")
    k = meta["n_components"]
    lengths = dict(zip(("row", "col"), meta["shape"]))
    for label, name in meta["current"].items():
        axis, _, kind = str(label).partition("_")
        try:
            array = group[name]
        except (KeyError, ValueError, TypeError) as err:
            raise _damaged(store, f"the current {label} {name!r} cannot be opened ({err!r})") from err
        if kind == "factors":
            want = ((lengths.get(axis), k), (meta.get(f"{axis}_chunk"), k), meta["dtype"])
        else:
            want = ((k, k), (k, k), "float64")
        got = (tuple(array.shape), tuple(array.chunks), array.dtype.name)
        if got != want:
            raise _damaged(store, f"{name!r} has shape, chunks and dtype {got}, expected {want}")
        _check_chunk_files(store, array)
    if meta["current"] and meta["params"].get("als") is False:
        # weights are written before the first commit, so a committed model has them
        for axis, length in lengths.items():
            name = f"{axis}_weights"
            try:
                array = group[name]
            except (KeyError, ValueError, TypeError) as err:
                raise _damaged(store, f"its {name} cannot be opened ({err!r})") from err
            if tuple(array.shape) != (length,):
                raise _damaged(store, f"{name} has shape {array.shape}, expected ({length},)")
            _check_chunk_files(store, array)


def _check_chunk_files(store, array):
    """Uncompressed chunks on a local disk must have their full size (not truncated)."""
    root = getattr(array.store, "root", None)
    if root is None or array.compressors or array.filters:
        return
    size = int(np.prod(array.chunks)) * array.dtype.itemsize
    found = 0
    for parent, _, files in os.walk(os.path.join(str(root), array.path, "c")):
        found += len(files)
        for file in files:
            path = os.path.join(parent, file)
            if os.path.getsize(path) != size:
                raise _damaged(
                    store, f"the chunk file {path!r} holds {os.path.getsize(path)} bytes, not {size}"
                )
    if array.attrs.get(_COMPLETE):
        expected = int(np.prod([-(-n // c) for n, c in zip(array.shape, array.chunks)]))
        if found != expected:
            raise _damaged(
                store, f"{array.path!r} has {found} chunk files of {expected} (some are missing)"
            )


def _try_open(store, mode="r"):
    try:
        return zarr.open_group(store, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        return None
