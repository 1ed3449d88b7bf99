"""Validation and normalisation of :class:`daskwals.WALSModel`'s TF-style arguments.

TF accepts weights and initial factors in several forms (scalars, one list per shard,
full arrays, callables); this module turns them into plain vectors and arrays, checks
them before anything is written, and opens or creates the model's store.
"""

from __future__ import annotations

import logging
import math
import numbers
import os

import dask.array as da
import numpy as np

from ._validation import check_int, check_nonneg_vector, dtype_name, nonneg, short  # noqa: F401 (re-exported)
from .store import FactorStore


def positive_int(name, value):
    return check_int(name, value, 1)

logger = logging.getLogger(__name__)

# Factor chunks (the unit a task writes) hold at most this many bytes by default.
_CHUNK_BYTES = 32 << 20


def open_or_create(store, shape, k, dtype, chunks, shards, params):
    """The model's FactorStore: an existing compatible model is opened, never replaced.

    A new store gets ``chunks`` rows per factor chunk, by default ``ceil(n / shards)``
    capped at 32 MiB per chunk. A local directory that holds anything but a daskwals
    model is refused rather than overwritten.
    """
    if isinstance(store, FactorStore):
        existing = store
    elif store is None:
        existing = None
    else:
        try:
            existing = FactorStore.open(store)
        except FileNotFoundError:
            existing = None
            if isinstance(store, (str, os.PathLike)) and "://" not in os.fspath(store):
                path = os.fspath(store)
                if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
                    raise ValueError(
                        f"store={path!r} exists and is not a daskwals model store; pass a new "
                        "or empty directory (WALSModel never overwrites other data)"
                    ) from None
    if existing is not None:
        _check_compatible(existing, shape, k, dtype, chunks)
        logger.info("opened the existing model at %s", existing.path)
        return existing
    dtype = dtype or "float32"
    itemsize = np.dtype(dtype).itemsize
    if chunks is None:
        cap = max(1024, _CHUNK_BYTES // (k * itemsize))
        chunks = tuple(max(1, min(math.ceil(n / s), cap)) for n, s in zip(shape, shards.values()))
    else:
        chunks = chunk_pair(chunks)
    return FactorStore.create(
        store, shape, k, row_chunk=min(chunks[0], shape[0]), col_chunk=min(chunks[1], shape[1]),
        dtype=dtype, params=params,
    )


def _check_compatible(store, shape, k, dtype, chunks):
    meta = store.meta
    where = store.path
    if tuple(meta["shape"]) != tuple(shape) or meta["n_components"] != k:
        raise ValueError(
            f"the store at {where!r} holds a {tuple(meta['shape'])} model of rank "
            f"{meta['n_components']}, not ({shape[0]}, {shape[1]}) of rank {k}; pass "
            "another store (or store=None) for a new model"
        )
    if dtype is not None and np.dtype(dtype) != np.dtype(meta["dtype"]):
        raise ValueError(
            f"the store at {where!r} holds {meta['dtype']} factors, not dtype={dtype!r}; pass "
            "dtype=None to use the store's"
        )
    if chunks is not None:
        chunks = chunk_pair(chunks)
        held = (meta["row_chunk"], meta["col_chunk"])
        want = (min(chunks[0], shape[0]), min(chunks[1], shape[1]))
        if want != held:
            raise ValueError(
                f"the store at {where!r} is chunked {held}, not chunks={chunks!r}; pass "
                "chunks=None to use the store's"
            )


def chunk_pair(chunks):
    pair = (chunks, chunks) if isinstance(chunks, numbers.Integral) else tuple(chunks)
    if len(pair) != 2 or not all(
        isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 1 for c in pair
    ):
        raise ValueError(f"chunks must be a positive int or a pair of them; got {chunks!r}")
    return tuple(int(c) for c in pair)


def shard_weights(name, value, sizes):
    """Per-shard weight vectors from TF's forms (scalar, per-shard lists, flat)."""
    total = sum(sizes)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        vec = np.full(total, float(value))
    elif isinstance(value, (list, tuple)) and value and all(np.ndim(v) == 1 for v in value):
        if len(value) != len(sizes):
            raise ValueError(
                f"{name} as a list of per-shard lists needs {len(sizes)} lists (one per shard); "
                f"got {len(value)}. Pass a flat sequence of {total} values or a scalar instead."
            )
        got = [len(v) for v in value]
        if got != list(sizes):
            raise ValueError(
                f"{name} shard lengths are {got}, but the shards hold {list(sizes)} rows "
                "(contiguous, the first ones one larger); pass a flat sequence instead"
            )
        vec = np.concatenate([np.asarray(v, dtype=np.float64) for v in value])
    else:
        if isinstance(value, da.Array):
            value = value.compute()
        try:
            vec = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            vec = None
        if vec is None or vec.shape != (total,):
            raise ValueError(
                f"{name} must be None, a non-negative scalar, a list of one list per shard or "
                f"a sequence of {total} values; got {short(value)}"
            )
    check_nonneg_vector(name, vec)
    offsets = np.cumsum([0, *sizes])
    return [vec[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def initial_factor(name, init, sizes, k):
    """None (random), or the full initial factor as a NumPy or dask array."""
    if callable(init):
        init = init()
    if isinstance(init, str):
        if init != "random":
            raise ValueError(f"{name} must be 'random', an array, a list of shards or a "
                             f"callable; got {init!r}")
        return None
    total = sum(sizes)
    if isinstance(init, (list, tuple)) and len(init) == len(sizes) and all(
        np.ndim(v) == 2 for v in init
    ):
        shards = [np.asarray(v, dtype=np.float64) for v in init]
        got = [s.shape for s in shards]
        want = [(s, k) for s in sizes]
        if got != want:
            raise ValueError(
                f"{name} as a list of shards needs shapes {want} (contiguous, the first ones "
                f"one row larger); got {got}"
            )
        full = np.concatenate(shards) if shards else np.zeros((0, k))
    elif isinstance(init, da.Array):
        if init.shape != (total, k):
            raise ValueError(f"{name} must have shape ({total}, {k}); got {init.shape}")
        return init.astype(np.float64)
    else:
        full = np.asarray(init)
        if full.shape != (total, k):
            raise ValueError(
                f"{name} must have shape ({total}, {k}) (rows × n_components), or be a list of "
                f"{len(sizes)} shard arrays; got shape {full.shape}"
            )
        if not np.issubdtype(full.dtype, np.number):
            raise ValueError(f"{name} must hold numbers; got dtype {full.dtype}")
        full = full.astype(np.float64)
    if not np.all(np.isfinite(full)):
        raise ValueError(f"{name} must hold finite numbers (no NaN or inf)")
    return full


def check_nonempty(inp):
    if not inp.lazy and inp.rows.size == 0:
        raise ValueError("sp_input has no stored entries: there is nothing to solve")


def projection_weights_value(weights, inp):
    if isinstance(weights, numbers.Real) and not isinstance(weights, bool):
        value = nonneg("projection_weights", weights)
        return value
    vec = np.asarray(weights.compute() if isinstance(weights, da.Array) else weights,
                     dtype=np.float64)
    if vec.ndim == 0:
        return nonneg("projection_weights", float(vec))
    if vec.ndim != 1:
        raise ValueError(f"projection_weights must be a scalar or 1-d; got shape {vec.shape}")
    if not inp.lazy:
        count = np.unique(inp.rows).size
        if vec.size != count:
            raise ValueError(
                f"projection_weights has {vec.size} values but sp_input has {count} rows to "
                "project; pass one weight per projected row (in order of first appearance), "
                "a scalar, or None for 1.0"
            )
    bad = np.flatnonzero(~np.isfinite(vec) | (vec < 0))
    if bad.size:
        raise ValueError(
            f"projection_weights must be finite and ≥ 0; the value at position {bad[0]} is "
            f"{vec[bad[0]]}"
        )
    return vec

