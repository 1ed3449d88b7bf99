"""Reliability (DESIGN.md §5): bad input, faults, damaged stores, one writer, properties.

Bad input must be refused with an error that names the parameter, the value and the fix,
before anything is written: stores are compared byte for byte (a digest of every file)
before and after. Faults run on real ``distributed.LocalCluster`` process workers. The
catalogue of errors and what each one means is ``docs/errors.md``; every row there points
at the test that checks it.

Every case here passes; a newly found gap is added as ``xfail(strict=True)`` with its
reason until it is fixed (docs/errors.md keeps the table).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import suppress
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import sparse
import zarr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import daskwals
from daskwals import WALS, FactorStore, Ratings, WALSModel
from daskwals.store import FORMAT_VERSION, StoreLockedError, writer_lock

from . import oracle
from .conftest import dense_and_mask, random_ratings

needs_walsmodel = pytest.mark.usefixtures()  # WALSModel is part of the package

K = 3
FIT = dict(n_iter=1, seed=0, dtype="float64", chunks=(8, 6), regularization=0.1)


# ----------------------------------------------------------------------- helpers
def digest(path):
    """{relative path: sha256} of every file under ``path``; None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }


def refused(exc_type, func, *parts):
    """``func()`` raises ``exc_type`` whose message matches every regex in ``parts``."""
    with pytest.raises(exc_type) as info:
        func()
    message = str(info.value)
    for part in parts:
        assert re.search(part, message), f"{part!r} is not in the message: {message}"
    return message


def ratings_30x20():
    """The 30 × 20 matrix of conftest's ``small`` (empty rows and column, stored zeros)."""
    return random_ratings(30, 20, 0.3, seed=1, empty_rows=(3, 17), empty_cols=(5,), zeros=2)


def sparse_random(n, m, nnz, seed):
    """An n × m CSR matrix with about ``nnz`` entries in 1..5, without a dense mask."""
    rng = np.random.default_rng(seed)
    lin = np.unique(rng.integers(0, n * m, size=nnz))
    values = rng.integers(1, 6, size=lin.size).astype(float)
    return scipy.sparse.csr_matrix((values, (lin // m, lin % m)), shape=(n, m))


def current_model(path):
    """(meta, U, V) of the store's current model, read fresh."""
    store = FactorStore.open(path, mode="r")
    return store.meta, np.asarray(store.factor("row")), np.asarray(store.factor("col"))


def assert_same_model(path, before):
    meta, U, V = current_model(path)
    for key in ("sweeps", "iterations", "loss_history", "current"):
        assert meta[key] == before[0][key], key
    np.testing.assert_array_equal(U, before[1])
    np.testing.assert_array_equal(V, before[2])
    with writer_lock(path):  # the failed fit released the writer lock
        pass


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """A model fitted for one iteration on ``ratings_30x20`` (never written by tests)."""
    path = tmp_path_factory.mktemp("base") / "m.zarr"
    with dask.config.set(scheduler="sync"):
        WALS(K, store=path, **FIT).fit(ratings_30x20())
    return path


@pytest.fixture
def model_store(base_store, tmp_path):
    """A private copy of ``base_store``."""
    path = tmp_path / "m.zarr"
    shutil.copytree(base_store, path)
    return path


def fit_on(path, X, **kw):
    params = dict(FIT, store=path, resume=True)
    params.update(kw)
    k = params.pop("n_components", K)
    return WALS(k, **params).fit(X)


# ============================================================== 1. bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["scipy", "sparse", "coo"])
def test_non_finite_ratings_are_refused_before_writing(model_store, tmp_path, bad, kind):
    row, col, val = np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([1.0, bad, 2.0])
    X = {
        "scipy": lambda: scipy.sparse.coo_matrix((val, (row, col)), shape=(30, 20)),
        "sparse": lambda: sparse.COO(np.stack([row, col]), val, shape=(30, 20)),
        "coo": lambda: Ratings.from_coo(row, col, val, (30, 20), chunks=(8, 6)),
    }[kind]
    before = digest(model_store)
    value = "nan" if np.isnan(bad) else str(bad)
    for path, resume in ((model_store, True), (model_store, False), (tmp_path / "new", False)):
        refused(ValueError, lambda p=path, r=resume: fit_on(p, X(), resume=r, overwrite=not r),
                r"non-finite", re.escape(value), r"row 1, column 1", r"Drop or impute")
    assert digest(model_store) == before
    assert digest(tmp_path / "new") is None


def _dask_with_nan():
    X = ratings_30x20().tocoo()
    data = X.data.copy()
    data[7] = np.nan
    coo = sparse.COO(np.stack([X.row, X.col]), data, shape=X.shape)
    return da.from_array(coo, chunks=(8, 6), asarray=False)


def test_nan_in_lazy_dask_input_keeps_the_last_complete_sweep(model_store):
    """Dask-array ratings are checked block by block when a sweep reads them."""
    before = current_model(model_store)
    refused(ValueError, lambda: fit_on(model_store, _dask_with_nan(), n_iter=2),
            r"non-finite", r"nan", r"Drop or impute")
    assert_same_model(model_store, before)


def test_nan_in_lazy_dask_input_writes_no_new_store(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        fit_on(tmp_path / "new.zarr", _dask_with_nan(), resume=False)
    assert digest(tmp_path / "new.zarr") is None


@pytest.mark.parametrize(
    ("row", "col", "parts"),
    [
        ([0, -1], [0, 1], [r"1 row indices are outside \[0, 30\)", r"the first is -1 at position 1"]),
        ([0, 30], [0, 1], [r"row indices are outside \[0, 30\) for shape\[0\]=30",
                           r"the first is 30"]),
        ([0, 1], [20, 1], [r"column indices are outside \[0, 20\)", r"the first is 20 at "
                           r"position 0"]),
        ([0, 1], [-5, 1], [r"column indices", r"the first is -5"]),
    ],
)
def test_indices_out_of_range_name_the_index_and_the_fix(row, col, parts):
    refused(ValueError, lambda: Ratings.from_coo(row, col, [1.0, 2.0], (30, 20)),
            *parts, r"zero-based indices and a shape that covers them")


def test_non_integer_indices_name_the_fix():
    refused(ValueError, lambda: Ratings.from_coo([0.5, 1], [0, 1], [1.0, 2.0], (30, 20)),
            r"row indices must be integers; got dtype float64", r"pandas\.factorize")
    refused(ValueError, lambda: Ratings.from_coo([0, 1], [0], [1.0, 2.0], (30, 20)),
            r"row, col and values must have the same length; got 2, 1 and 2")


def test_duplicate_entries_are_refused_and_the_named_fix_works(model_store):
    X = ratings_30x20().tocoo()
    row, col = np.r_[X.row, X.row[4]], np.r_[X.col, X.col[4]]
    dup = scipy.sparse.coo_matrix((np.r_[X.data, 2.0], (row, col)), shape=X.shape)
    before = digest(model_store)
    refused(ValueError, lambda: fit_on(model_store, dup, overwrite=True, resume=False),
            r"1 duplicate \(row, column\) entries",
            rf"\(row {X.row[4]}, column {X.col[4]}\)", r"sum_duplicates=True")
    assert digest(model_store) == before
    # the fix the message names: sum them up (what scipy's tocsr() does)
    summed = daskwals.as_ratings(dup, chunks=(8, 6), sum_duplicates=True)
    a = WALS(K, **FIT).fit(summed)
    b = WALS(K, **FIT).fit(dup.tocsr())
    np.testing.assert_array_equal(np.asarray(a.row_factors_), np.asarray(b.row_factors_))


@pytest.mark.parametrize(
    ("make", "exc", "parts"),
    [
        (lambda: scipy.sparse.csr_matrix(np.eye(30, 20) * (1 + 1j)), ValueError,
         [r"ratings must be real numbers; got dtype complex128", r"\.astype\(float\)"]),
        (lambda: Ratings.from_coo([0, 1], [0, 1], ["4", "5"], (30, 20)), ValueError,
         [r"real numbers; got dtype <U1", r"\.astype\(float\)"]),
        (lambda: np.ones((30, 20)), TypeError,
         [r"type ndarray", r"scipy\.sparse matrix", r"dense arrays are refused"]),
        (lambda: [[1.0, 2.0]], TypeError, [r"type list", r"scipy\.sparse matrix"]),
        (lambda: da.ones((30, 20), chunks=(8, 6)), TypeError,
         [r"must have sparse blocks \(meta ndarray\)", r"map_blocks\(sparse\.COO\.from_numpy\)"]),
        (lambda: sparse.COO.from_scipy_sparse(ratings_30x20()) + 1, ValueError,
         [r"fill_value=.*1\.0", r"Build it with fill_value=0"]),
        (lambda: sparse.zeros((30, 20, 2)), ValueError,
         [r"ratings must be 2-d; got a sparse array of shape \(30, 20, 2\)"]),
    ],
    ids=["complex", "strings", "dense-ndarray", "list", "dask-numpy-blocks", "fill-value",
         "3-d"],
)
def test_unsupported_ratings_types_and_values(model_store, make, exc, parts):
    before = digest(model_store)
    refused(exc, lambda: fit_on(model_store, make(), overwrite=True, resume=False), *parts)
    assert digest(model_store) == before


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        (dict(n_components=-2), [r"n_components must be an integer ≥ 1; got -2"]),
        (dict(n_components=True), [r"n_components must be an integer ≥ 1; got True"]),
        (dict(unobserved_weight=float("nan")), [r"unobserved_weight must be a finite number "
                                                r"≥ 0; got nan"]),
        (dict(unobserved_weight=-1e-9), [r"unobserved_weight must be a finite number ≥ 0; "
                                         r"got -1e-09"]),
        (dict(regularization=float("inf")), [r"regularization must be a finite number ≥ 0; "
                                             r"got inf"]),
        (dict(regularization="0.1"), [r"regularization must be a finite number ≥ 0; got '0.1'"]),
        (dict(regularization=-0.5), [r"regularization must be a finite number ≥ 0; got -0.5"]),
        (dict(row_weights=np.r_[np.ones(29), -2.0]), [r"row_weights must be finite and ≥ 0",
                                                      r"the first is -2.0 at position 29"]),
        (dict(col_weights=np.r_[1.0, 1.0, 1.0, np.nan, np.ones(16)]),
         [r"col_weights must be finite and ≥ 0", r"nan at position 3"]),
        (dict(col_weights=-0.5), [r"col_weights must be finite and ≥ 0", r"-0.5"]),
        (dict(row_weights=np.ones(29)), [r"row_weights must be a scalar or have one value per "
                                         r"row \(30\); got shape \(29,\)"]),
        (dict(col_weights=None), [r"both be None", r"col_weights=None", r"Set the other one"]),
        (dict(row_init="normal"), [r"row_init must be 'random' or an array; got 'normal'"]),
        (dict(row_init=np.ones((30, 4))), [r"row_init must have shape \(30, 3\)",
                                           r"got \(30, 4\)"]),
        (dict(col_init=np.ones((21, 3))), [r"col_init must have shape \(20, 3\)",
                                           r"got \(21, 3\)"]),
        (dict(dtype="float16"), [r"dtype must be 'float32' or 'float64'; got 'float16'"]),
        (dict(chunks=0), [r"chunk sizes must be positive ints or 'auto'; got 0"]),
        (dict(chunks=(8, 6, 2)), [r"chunks must be 'auto', an int or a pair; got \(8, 6, 2\)"]),
        (dict(n_iter=1.5), [r"n_iter must be an integer ≥ 0; got 1.5"]),
        (dict(entry_weights=random_ratings(31, 20, 0.3, seed=2)),
         [r"entry_weights must have the ratings' shape \(30, 20\)", r"got shape \(31, 20\)"]),
        (dict(entry_weights=lambda r: r, row_weights=None, col_weights=None),
         [r"entry_weights need row_weights and col_weights", r"Set row_weights=1"]),
    ],
)
def test_bad_parameters_name_parameter_value_and_fix(model_store, tmp_path, kwargs, parts):
    """Checked before the store is touched, even with overwrite=True (beyond test_estimator)."""
    X = ratings_30x20()
    before = digest(model_store)
    refused(ValueError, lambda: fit_on(model_store, X, overwrite=True, resume=False, **kwargs),
            *parts)
    refused(ValueError, lambda: fit_on(model_store, X, **kwargs), *parts)
    refused(ValueError, lambda: fit_on(tmp_path / "new.zarr", X, resume=False, **kwargs), *parts)
    assert digest(model_store) == before
    assert digest(tmp_path / "new.zarr") is None


def test_non_finite_init_names_the_value_and_position(tmp_path):
    init = np.ones((30, K))
    init[4, 1] = np.nan
    refused(ValueError, lambda: fit_on(tmp_path / "new.zarr", ratings_30x20(), resume=False,
                                       row_init=init),
            r"row_init", r"nan", r"\(4, 1\)|row 4")


@pytest.mark.parametrize("split_every", [0, 1])
def test_split_every_below_two_is_refused(tmp_path, split_every):
    refused(ValueError, lambda: fit_on(tmp_path / "new.zarr", ratings_30x20(), resume=False,
                                       split_every=split_every),
            rf"split_every must be an integer ≥ 2 or None; got {split_every}")
    assert digest(tmp_path / "new.zarr") is None


def test_callback_that_is_not_callable_is_refused_before_writing(tmp_path):
    refused((TypeError, ValueError),
            lambda: fit_on(tmp_path / "new.zarr", ratings_30x20(), resume=False, callback=5),
            r"callback", r"5")
    assert digest(tmp_path / "new.zarr") is None


def test_store_of_an_unsupported_type_names_the_parameter():
    refused((TypeError, ValueError), lambda: WALS(K, store=12345, **FIT).fit(ratings_30x20()),
            r"store", r"12345")


def test_negative_entry_weights_keep_the_last_complete_sweep(model_store):
    """Per-entry weights are checked block by block as the sweeps read them."""
    X = ratings_30x20()
    E = X.copy()
    E.data = -E.data - 1.0
    before = current_model(model_store)
    for ew in (E, lambda r: -r):
        refused(ValueError, lambda w=ew: fit_on(model_store, X, n_iter=2, entry_weights=w),
                r"entry_weights must be finite and ≥ 0", r"the first is -\d", r"Clip or transform")
    assert_same_model(model_store, before)


def test_negative_entry_weights_write_no_new_store(tmp_path):
    X = ratings_30x20()
    E = X.copy()
    E.data = -E.data - 1.0
    with pytest.raises(ValueError, match="entry_weights must be finite"):
        fit_on(tmp_path / "new.zarr", X, resume=False, entry_weights=E)
    assert digest(tmp_path / "new.zarr") is None


def test_empty_matrix_is_refused_before_writing(tmp_path):
    empty = scipy.sparse.csr_matrix((30, 20))
    refused(ValueError, lambda: fit_on(tmp_path / "new.zarr", empty, resume=False),
            r"no stored entries", r"X")
    assert digest(tmp_path / "new.zarr") is None


def test_zero_sized_shape_is_refused():
    refused(ValueError, lambda: WALS(K, **FIT).fit(scipy.sparse.csr_matrix((0, 20))),
            r"shape must be two positive ints \(n_rows, n_cols\); got \(0, 20\)")


@pytest.mark.parametrize(
    ("X", "kwargs", "parts"),
    [
        (random_ratings(31, 20, 0.3, seed=1), {},
         [r"shape: store has \[30, 20\], fit asks for \[31, 20\]"]),
        (ratings_30x20(), dict(n_components=4), [r"n_components: store has 3, fit asks for 4"]),
        (ratings_30x20(), dict(dtype="float32"),
         [r"dtype: store has 'float64', fit asks for 'float32'"]),
        (ratings_30x20(), dict(unobserved_weight=0.5),
         [r"unobserved_weight: store has 0.1, fit asks for 0.5"]),
        (ratings_30x20(), dict(seed=1), [r"seed: store has 0, fit asks for 1"]),
        (ratings_30x20(), dict(row_weights=2.0), [r"its row_weights differ",
                                                  r"pass the same row_weights"]),
    ],
    ids=["shape", "rank", "dtype", "w0", "seed", "weights"],
)
def test_resume_on_a_store_for_another_model_is_refused(model_store, X, kwargs, parts):
    before = digest(model_store)
    fix = r"Fit with the store's settings, or pass resume=False and overwrite=True"
    refused(ValueError, lambda: fit_on(model_store, X, n_iter=2, **kwargs),
            r"cannot resume the model at", *parts,
            fix if "row_weights" not in kwargs else "start a new model")
    assert digest(model_store) == before


def test_queries_with_wrong_shapes_or_indices_change_nothing(model_store):
    model = daskwals.open(model_store)
    before = digest(model_store)
    refused(ValueError, lambda: model.transform(random_ratings(3, 21, 0.5, seed=1)),
            r"X must have one column per item of the model \(20\); got shape \(3, 21\)")
    refused(ValueError, lambda: model.transform(random_ratings(3, 20, 0.5, seed=1),
                                                row_weights=np.ones(4)),
            r"row_weights must be a scalar or have one value per new row \(3\)")
    refused(ValueError, lambda: model.transform(random_ratings(3, 20, 0.5, seed=1),
                                                row_weights=-1.0),
            r"row_weights must be finite and ≥ 0", r"-1.0")
    refused(ValueError, lambda: model.recommend([30], filter_already_liked=False),
            r"rows must lie in \[0, 30\); got 30")
    refused(ValueError, lambda: model.recommend([-1], filter_already_liked=False),
            r"rows must lie in \[0, 30\); got -1")
    refused(ValueError, lambda: model.recommend([1], N=0, filter_already_liked=False),
            r"N must be an integer ≥ 1; got 0")
    refused(ValueError, lambda: model.similar_items([20]), r"items must lie in \[0, 20\); got 20")
    refused(ValueError, lambda: model.partial_fit(random_ratings(2, 20, 0.5, seed=1), [0, 30]),
            r"rows must lie in \[0, 30\); got 30")
    refused(ValueError, lambda: model.score(random_ratings(31, 20, 0.3, seed=1)),
            r"shape \(31, 20\)", r"30 × 20")
    assert digest(model_store) == before


# ---------------------------------------------------------------- stores
def _set_meta(path, **changes):
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs["daskwals"])
    meta.update(changes)
    group.attrs["daskwals"] = meta


def test_store_of_a_newer_format_is_refused_everywhere(model_store):
    _set_meta(model_store, format_version=FORMAT_VERSION + 1)
    before = digest(model_store)
    parts = (rf"format version {FORMAT_VERSION + 1}", r"newer than this daskwals supports",
             r"upgrade daskwals")
    X = ratings_30x20()
    refused(ValueError, lambda: fit_on(model_store, X, n_iter=2), *parts)
    refused(ValueError, lambda: daskwals.open(model_store), *parts)
    refused(FileExistsError, lambda: fit_on(model_store, X, resume=False),
            r"already exists", r"overwrite=True")
    if WALSModel is not None:
        refused(ValueError, lambda: WALSModel(30, 20, K, store=model_store), *parts)
    assert digest(model_store) == before


def _current(path, label):
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]["daskwals"][
        "current"][label]


def _chunk_file(path, label):
    return sorted(p for p in (Path(path) / _current(path, label) / "c").rglob("*")
                  if p.is_file())[1]


def _truncate(file, keep=None):
    data = Path(file).read_bytes()
    Path(file).write_bytes(data[: len(data) // 2 if keep is None else keep])


DAMAGE = {
    "group-json-truncated": (lambda p: _truncate(p / "zarr.json"), r"group metadata cannot be read"),
    "group-json-garbage": (lambda p: (p / "zarr.json").write_bytes(b"\x00\xffgarbage"),
                           r"group metadata cannot be read"),
    "group-json-empty": (lambda p: _truncate(p / "zarr.json", 0), r"group metadata cannot be read"),
    "group-json-not-an-object": (lambda p: (p / "zarr.json").write_text("[1, 2]"),
                                 r"group metadata cannot be read"),
    "group-json-deleted": (lambda p: (p / "zarr.json").unlink(),
                           r"group metadata \(zarr\.json\) is missing or invalid"),
    "meta-entry-missing": (lambda p: _set_meta(p, current=None),
                           r"metadata entry 'current' is None"),
    "meta-not-a-dict": (lambda p: zarr.open_group(p, mode="r+").attrs.update(daskwals=5),
                        r"'daskwals' attribute is int"),
    "factor-array-deleted": (lambda p: shutil.rmtree(p / _current(p, "col_factors")),
                             r"current col_factors 'col_factors/v\d+' cannot be opened"),
    "factor-json-truncated": (lambda p: _truncate(p / _current(p, "row_factors") / "zarr.json"),
                              r"current row_factors 'row_factors/v\d+' cannot be opened"),
    "factor-chunk-truncated": (lambda p: _truncate(_chunk_file(p, "col_factors")),
                               r"the chunk file '.*col_factors/v\d+/c/1/0' holds 72 bytes, "
                               r"not 144"),
    "gramian-deleted": (lambda p: shutil.rmtree(p / _current(p, "row_gramian")),
                        r"current row_gramian 'row_gramian/v\d+' cannot be opened"),
    "weights-deleted": (lambda p: shutil.rmtree(p / "col_weights"),
                        r"its col_weights cannot be opened"),
    "factor-shape-changed": (lambda p: _set_meta(p, shape=[30, 21]),
                             r"'col_factors/v\d+' has shape, chunks and dtype \(\(20, 3\)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_store_is_named_and_never_overwritten_by_resume(model_store, damage):
    """FactorStore.open checks the metadata, the current arrays and the chunk file sizes."""
    make, detail = DAMAGE[damage]
    make(model_store)
    before = digest(model_store)
    parts = (r"the model store at '.*m\.zarr' is damaged", detail, r"Restore it from a copy",
             r"overwrite=True")
    refused(ValueError, lambda: FactorStore.open(model_store, mode="r"), *parts)
    refused(ValueError, lambda: daskwals.open(model_store), *parts)
    refused(ValueError, lambda: fit_on(model_store, ratings_30x20(), n_iter=2), *parts)
    if WALSModel is not None:
        refused(ValueError, lambda: WALSModel(30, 20, K, store=model_store), *parts)
    assert digest(model_store) == before
    # the named fix: a new model replaces the damaged one
    assert fit_on(model_store, ratings_30x20(), resume=False, overwrite=True).n_iter_ == 1
    FactorStore.open(model_store)


def test_deleted_factor_chunk_is_detected(model_store):
    _chunk_file(model_store, "col_factors").unlink()
    refused(ValueError, lambda: FactorStore.open(model_store), r"damaged", r"col_factors")


@pytest.mark.parametrize("mode", [dict(), dict(overwrite=True), dict(resume=True)])
def test_fit_never_deletes_unrelated_files(tmp_path, mode):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.csv").write_text("user,item\n1,2\n")
    with suppress(ValueError, FileExistsError):
        WALS(K, store=target, **mode, **FIT).fit(ratings_30x20())
    assert (target / "notes.csv").read_text() == "user,item\n1,2\n"


# --------------------------------------------------------------- WALSModel
@needs_walsmodel
def test_walsmodel_more_shards_than_rows_gives_empty_trailing_shards():
    """TF's "div" layout with num_shards > size: accepted, trailing shards hold 0 rows."""
    with dask.config.set(scheduler="sync"):
        model = WALSModel(3, 4, 2, num_row_shards=5, num_col_shards=6, seed=0)
        dask.compute(model.initialize_op)
        rows = dask.compute(*model.row_factors)
        cols = dask.compute(*model.col_factors)
        weights = dask.compute(*model.col_weights)
    assert [r.shape[0] for r in rows] == [1, 1, 1, 0, 0]
    assert [c.shape[0] for c in cols] == [1, 1, 1, 1, 0, 0]
    assert [w.shape[0] for w in weights] == [1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(np.concatenate(rows), np.asarray(model.store.factor("row")))
    np.testing.assert_array_equal(np.concatenate(cols), np.asarray(model.store.factor("col")))
    refused(ValueError, lambda: WALSModel(3, 4, 2, num_row_shards=0), r"num_row_shards", r"0")
    refused(ValueError, lambda: WALSModel(3, 4, 0), r"n_components", r"got 0")


# ============================================================== 2. faults
def _wait_for_replacement(client, old, timeout=120):
    """Wait until two workers run again, one of them new."""
    deadline = time.monotonic() + timeout
    while True:
        workers = set(client.scheduler_info()["workers"])
        if len(workers) == 2 and workers != old:
            return
        assert time.monotonic() < deadline, f"no replacement worker: {workers}"
        time.sleep(0.1)


def test_worker_killed_mid_sweep_gives_the_undisturbed_model(client, tmp_path):
    """SIGKILL one worker process while it solves a row block: the nanny restarts it,
    the lost tasks run again, and the factors equal an undisturbed run."""
    X = sparse_random(6000, 2000, 150_000, seed=11)
    kw = dict(n_iter=3, seed=0, dtype="float64", regularization=0.1, chunks=(600, 500))
    with dask.config.set(scheduler="threads"):
        ref = WALS(8, **kw).fit(X)
    client.wait_for_workers(2, timeout=120)
    pids = client.run(os.getpid)
    killed, stop = [], threading.Event()

    def killer():
        while not stop.is_set():
            for worker, keys in client.processing().items():
                if worker in pids and any("solve" in str(key) for key in keys):
                    os.kill(pids[worker], signal.SIGKILL)
                    killed.append((worker, keys))
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        model = WALS(8, store=tmp_path / "m.zarr", **kw).fit(X)
    finally:
        stop.set()
        thread.join()
    assert killed, "no solve task was seen running; the fit ended before the kill"
    _wait_for_replacement(client, set(pids))  # the nanny restarted the killed worker
    np.testing.assert_allclose(np.asarray(model.row_factors_), np.asarray(ref.row_factors_),
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(model.col_factors_), np.asarray(ref.col_factors_),
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(model.loss_history_, ref.loss_history_, rtol=1e-12)
    assert FactorStore.open(tmp_path / "m.zarr").meta["sweeps"] == 6


CLIENT_SCRIPT = """
import json, logging, sys
import dask, distributed, scipy.sparse
from daskwals import WALS

if __name__ == "__main__":
    X = scipy.sparse.load_npz(sys.argv[1])
    kw = json.loads(sys.argv[3])
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.CRITICAL, env={"NUMBA_NUM_THREADS": "1"})
    client = distributed.Client(cluster)
    WALS(kw.pop("k"), store=sys.argv[2], **kw).fit(X)
    print("finished", flush=True)
"""


def _mid_sweep(path):
    """True once a sweep is committed and a later, uncommitted version has chunks on disk."""
    path = Path(path)
    try:
        meta = json.loads((path / "zarr.json").read_text())["attributes"]["daskwals"]
        if meta["sweeps"] < 1:
            return False
        current = set(meta["current"].values())
        for axis in ("row", "col"):
            for version in (path / f"{axis}_factors").iterdir():
                name = f"{axis}_factors/{version.name}"
                if version.is_dir() and name not in current and any(
                    p.is_file() for p in (version / "c").rglob("*")
                ):
                    return True
    except (OSError, ValueError, KeyError):
        return False  # a file replaced or removed while we read: try again
    return False


def test_client_killed_mid_sweep_resumes_to_the_uninterrupted_model(client, tmp_path):
    """The process running fit on its own LocalCluster is SIGKILLed mid-sweep; the store
    holds the last complete sweep, and resume=True ends where an uninterrupted fit ends."""
    X = sparse_random(6000, 2000, 150_000, seed=12)
    kw = dict(k=6, n_iter=5, seed=3, dtype="float64", regularization=0.1, chunks=(600, 500))
    scipy.sparse.save_npz(tmp_path / "x.npz", X)
    script = tmp_path / "fit_on_cluster.py"
    script.write_text(textwrap.dedent(CLIENT_SCRIPT))
    path, log = tmp_path / "m.zarr", tmp_path / "fit.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "x.npz"), str(path), json.dumps(kw)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not _mid_sweep(path):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the fit never reached a second sweep"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        with suppress(ProcessLookupError):  # its worker processes, orphaned by the kill
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    store = FactorStore.open(path)  # opens: no damage
    meta = store.meta
    assert 1 <= meta["sweeps"] < 2 * kw["n_iter"]
    assert len(meta["loss_history"]) == meta["sweeps"] // 2
    k = kw.pop("k")
    resumed = WALS(k, store=path, resume=True, **kw).fit(X)
    with dask.config.set(scheduler="threads"):
        whole = WALS(k, **kw).fit(X)
    np.testing.assert_array_equal(np.asarray(resumed.row_factors_),
                                  np.asarray(whole.row_factors_))
    np.testing.assert_array_equal(np.asarray(resumed.col_factors_),
                                  np.asarray(whole.col_factors_))
    assert resumed.loss_history_ == whole.loss_history_
    assert FactorStore.open(path).meta["sweeps"] == 2 * kw["n_iter"]


def _generated_ratings(shape, chunks, nnz_per_block, seed):
    """A dask array whose sparse blocks are generated inside the tasks (never by the client)."""

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        rng = np.random.default_rng([seed, r0, c0])
        lin = np.unique(rng.integers(0, (r1 - r0) * (c1 - c0), size=nnz_per_block))
        coords = np.stack([lin // (c1 - c0), lin % (c1 - c0)])
        return sparse.COO(coords, rng.random(lin.size) + 1.0, shape=(r1 - r0, c1 - c0),
                          has_duplicates=False, sorted=True)

    sizes = tuple(tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(shape, chunks))
    return da.map_blocks(block, dtype=np.float64, chunks=sizes,
                         meta=sparse.COO.from_numpy(np.empty((0, 0))))


@pytest.mark.slow  # 10-20 s: its own cluster, workers killed and restarted, 0.5 GB blocks
def test_task_over_the_memory_limit_fails_clearly_and_keeps_the_model(tmp_path):
    """A block far beyond a worker's memory limit: the nanny kills the worker, the task
    is retried, and the fit ends in KilledWorker; the store keeps the last complete sweep."""
    distributed = pytest.importorskip("distributed")
    shape, chunks = (40_000, 30_000), (20_000, 15_000)
    kw = dict(seed=0, dtype="float64", regularization=0.1, store=tmp_path / "m.zarr")
    with dask.config.set(scheduler="threads"):
        WALS(4, n_iter=1, **kw).fit(_generated_ratings(shape, chunks, 2_000, seed=1))
    before = current_model(tmp_path / "m.zarr")
    huge = _generated_ratings(shape, chunks, 20_000_000, seed=1)  # ≈ 0.5 GB per block
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.scheduler.allowed-failures": 1}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      memory_limit="300MiB", dashboard_address=":0",
                                      silence_logs=logging.CRITICAL,
                                      env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
                distributed.Client(cluster):
            refused(distributed.KilledWorker,
                    lambda: WALS(4, n_iter=2, resume=True, **kw).fit(huge),
                    r"Attempted to run task", r"on 2 different workers",
                    r"all those workers died while running it")
    assert_same_model(tmp_path / "m.zarr", before)


def test_non_finite_guard_fires_on_the_cluster(client, tmp_path):
    """The FloatingPointError of _blockops.solve_pieces crosses from a worker process
    unchanged, and the store keeps the last good sweep."""
    X = random_ratings(20, 15, 0.4, seed=2)
    kw = dict(store=tmp_path / "m.zarr", dtype="float32", regularization=0.1, seed=0,
              chunks=(6, 5))
    WALS(K, n_iter=1, **kw).fit(X)
    before = current_model(tmp_path / "m.zarr")
    refused(FloatingPointError, lambda: WALS(K, n_iter=2, resume=True, **kw).fit(X * 1e40),
            r"the new factor of row \d+ is not finite \(in float32\)", r"dtype='float64'",
            r"The store keeps the last complete sweep")
    assert_same_model(tmp_path / "m.zarr", before)
    assert FactorStore.open(tmp_path / "m.zarr").meta["sweeps"] == 2


# ============================================================== 3. one writer
HOLDING_FIT = """
import os, sys, time
import dask, scipy.sparse
from daskwals import WALS

X = scipy.sparse.load_npz(sys.argv[1])
store, flag = sys.argv[2], sys.argv[3]

def hold(model, iteration, loss):
    if iteration == 1:  # inside fit, holding the store's writer lock
        open(flag + ".holding", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(flag + ".release") and time.monotonic() < deadline:
            time.sleep(0.01)

with dask.config.set(scheduler="threads"):
    WALS(4, n_iter=3, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7), store=store,
         resume=True, callback=hold).fit(X)
print("finished", flush=True)
"""

WINDOW_FIT = """
import os, sys, time
import dask, scipy.sparse
import daskwals.ratings
from daskwals import WALS

X = scipy.sparse.load_npz(sys.argv[1])
store, flag = sys.argv[2], sys.argv[3]
persist = daskwals.ratings.Ratings.persist

def slow_persist(self, **kwargs):  # fit calls it after writing the initial model
    open(flag + ".holding", "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(flag + ".release") and time.monotonic() < deadline:
        time.sleep(0.01)
    return persist(self, **kwargs)

daskwals.ratings.Ratings.persist = slow_persist
with dask.config.set(scheduler="threads"):
    WALS(4, n_iter=3, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7), store=store,
         overwrite=True).fit(X)
print("finished", flush=True)
"""


def _start_holder(tmp_path, source, X):
    scipy.sparse.save_npz(tmp_path / "x.npz", X)
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(source))
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "x.npz"), str(tmp_path / "m.zarr"),
         str(flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not Path(f"{flag}.holding").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the first fit ended early: {out}{err}")
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc, flag


def _release(proc, flag):
    Path(f"{flag}.release").touch()
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_two_concurrent_fits_on_one_store_exactly_one_is_refused(tmp_path):
    """Process A fits (holding the writer lock); process B's fit of the same store is
    refused naming A; A then completes with the model an undisturbed fit gives."""
    X = random_ratings(40, 30, 0.2, seed=3)
    kw = dict(n_iter=3, seed=7, dtype="float64", regularization=0.1, chunks=(9, 7))
    proc, flag = _start_holder(tmp_path, HOLDING_FIT, X)
    outcomes = {}
    try:
        for name, extra in (("resume", dict(resume=True)), ("overwrite", dict(overwrite=True))):
            try:
                WALS(4, store=tmp_path / "m.zarr", **extra, **kw).fit(X)
                outcomes[name] = "finished"
            except StoreLockedError as err:
                outcomes[name] = str(err)
    finally:
        code, out, err = _release(proc, flag)
    assert code == 0 and "finished" in out, err
    for message in outcomes.values():
        assert re.search(rf"being written by process {proc.pid} .*break_lock=True", message)
    with dask.config.set(scheduler="threads"):
        whole = WALS(4, **kw).fit(X)
    meta, U, V = current_model(tmp_path / "m.zarr")
    assert meta["sweeps"] == 6
    np.testing.assert_array_equal(U, np.asarray(whole.row_factors_))
    np.testing.assert_array_equal(V, np.asarray(whole.col_factors_))


def test_fit_started_while_another_initialises_is_refused(tmp_path):
    X = random_ratings(40, 30, 0.2, seed=3)
    proc, flag = _start_holder(tmp_path, WINDOW_FIT, X)
    try:
        with pytest.raises(StoreLockedError):
            WALS(4, store=tmp_path / "m.zarr", overwrite=True, n_iter=1, seed=8,
                 chunks=(9, 7)).fit(X)
    finally:
        _release(proc, flag)


def test_leftover_lock_files_never_block_a_writer(model_store, tmp_path):
    """The lock is an flock: a lock file's content (a dead writer's, or empty) blocks no one."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = model_store / "daskwals.lock"
    for content in (json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout),
                                "since": 0}), "", "garbage"):
        lock.write_text(content)
        assert fit_on(model_store, ratings_30x20(), n_iter=2).n_iter_ == 2


CONCURRENT_WRITERS = """
import os, sys, time
from daskwals.store import StoreLockedError, writer_lock
try:
    with writer_lock(sys.argv[1]):
        print("locked", flush=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
            time.sleep(0.05)
except StoreLockedError:
    print("refused", flush=True)
"""


def test_while_one_writer_holds_the_lock_every_other_is_refused(model_store, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(CONCURRENT_WRITERS))

    release = tmp_path / "release"

    def start():
        return subprocess.Popen([sys.executable, str(script), str(model_store), str(release)],
                                stdout=subprocess.PIPE, text=True)

    holder = start()
    assert holder.stdout.readline().strip() == "locked"
    others = [start() for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in others]
    assert outs == ["refused"] * 3
    release.touch()
    holder.communicate(timeout=120)
    after = start()
    assert after.communicate(timeout=120)[0].strip() == "locked"


# ============================================================== 4. properties
@st.composite
def problems(draw):
    """A small WALS problem: matrix, chunking, fan-in, weights, W0, λ and initial factors."""
    n, m, k = draw(st.integers(2, 25)), draw(st.integers(2, 25)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((n, m)) < draw(st.floats(0.05, 0.7))
    row, col = np.nonzero(mask)
    values = rng.integers(0, 6, size=row.size).astype(float)  # 0: a stored zero
    X = scipy.sparse.csr_matrix((values, (row, col)), shape=(n, m))
    assume(X.nnz > 0)  # an empty matrix is refused (test_empty_matrix_is_refused_before_writing)
    kind = draw(st.sampled_from(["scalar", "vector", "als"]))
    R, C = {
        "scalar": (draw(st.floats(0.1, 3.0)), draw(st.floats(0.1, 3.0))),
        "vector": (rng.random(n) * 3, rng.random(m) * 2),
        "als": (None, None),
    }[kind]
    w0 = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    lam = draw(st.one_of(st.none(), st.floats(0.01, 1.0)))
    # without λ the systems are regular only when W0 > 0 and the nonzero values span k
    # directions on both sides (rows and columns with only zeros solve to 0)
    nonzero = X.toarray() != 0
    assume(lam is not None or (w0 > 0 and min(nonzero.any(1).sum(), nonzero.any(0).sum()) > k))
    return dict(
        X=X, k=k, R=R, C=C, w0=w0, lam=lam,
        U0=rng.standard_normal((n, k)), V0=rng.standard_normal((m, k)),
        chunks=(draw(st.integers(1, n)), draw(st.integers(1, m))),
        split_every=draw(st.sampled_from([None, 2, 3])),
        cache=draw(st.booleans()), gramian_cache=draw(st.booleans()),
    )


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(problems())
def test_property_equals_the_dense_oracle_and_the_loss_never_rises(p):
    n_iter = 3
    with dask.config.set(scheduler="sync"):
        model = WALS(
            p["k"], unobserved_weight=p["w0"], regularization=p["lam"], row_weights=p["R"],
            col_weights=p["C"], n_iter=n_iter, row_init=p["U0"], col_init=p["V0"],
            dtype="float64", chunks=p["chunks"], split_every=p["split_every"],
            use_factors_weights_cache=p["cache"], use_gramian_cache=p["gramian_cache"], seed=0,
        ).fit(p["X"])
        U, V = np.asarray(model.row_factors_), np.asarray(model.col_factors_)
    A, mask = dense_and_mask(p["X"])
    U1, V1, hist = oracle.dense_wals(A, mask, p["U0"], p["V0"], w0=p["w0"], lam=p["lam"],
                                     row_weights=p["R"], col_weights=p["C"], n_iter=n_iter)
    np.testing.assert_allclose(U, U1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(V, V1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.loss_history_, hist, rtol=1e-6, atol=1e-9)
    loss = np.asarray(model.loss_history_)
    assert np.all(np.diff(loss) <= 1e-9 * np.abs(loss[:-1]) + 1e-12)


@needs_walsmodel
@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 30), m=st.integers(1, 12), shards=st.integers(1, 8),
       col_shards=st.integers(1, 8), seed=st.integers(0, 1000))
def test_property_shard_views_concatenate_to_the_full_factor(n, m, shards, col_shards, seed):
    rng = np.random.default_rng(seed)
    with dask.config.set(scheduler="sync"):
        model = WALSModel(n, m, 2, num_row_shards=shards, num_col_shards=col_shards, seed=seed,
                          row_weights=rng.random(n), col_weights=1.0)
        dask.compute(model.initialize_op)
        rows = dask.compute(*model.row_factors)
        cols = dask.compute(*model.col_factors)
        weights = dask.compute(*model.row_weights)
    sizes = [n // shards + (i < n % shards) for i in range(shards)]
    assert [r.shape for r in rows] == [(s, 2) for s in sizes]
    assert [w.shape for w in weights] == [(s,) for s in sizes]
    assert len(cols) == col_shards
    np.testing.assert_array_equal(np.concatenate(rows), np.asarray(model.store.factor("row")))
    np.testing.assert_array_equal(np.concatenate(cols), np.asarray(model.store.factor("col")))
    np.testing.assert_array_equal(np.concatenate(weights), np.asarray(model.store.weights("row")))
