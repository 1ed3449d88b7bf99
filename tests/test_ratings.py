"""Ratings: construction from every input type, both orientations, and bad input."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import sparse

from daskwals import Ratings, as_ratings

from .conftest import dense_and_mask, random_ratings


def densify(x):
    return x.map_blocks(lambda b: b.todense(), meta=np.empty((0, 0))).compute()


def stored_mask(x):
    return x.map_blocks(
        lambda b: sparse.COO(b.coords, np.ones(b.nnz, bool), shape=b.shape).todense(),
        meta=np.empty((0, 0), bool),
    ).compute()


@pytest.mark.parametrize("chunks", ["auto", 7, (4, 30), (30, 3)])
def test_from_scipy_both_orientations(small, chunks):
    A, mask = dense_and_mask(small)
    r = Ratings.from_scipy(small, chunks=chunks)
    assert r.shape == (30, 20) and r.nnz == small.nnz
    np.testing.assert_array_equal(densify(r.rows), A)
    np.testing.assert_array_equal(densify(r.cols), A.T)
    np.testing.assert_array_equal(stored_mask(r.rows), mask)
    np.testing.assert_array_equal(stored_mask(r.cols), mask.T)
    assert r.chunks == r.cols.chunks[::-1]
    assert r.T.shape == (20, 30)


def test_stored_zeros_are_observed(small):
    r = as_ratings(small)
    assert r.nnz == small.nnz
    assert np.sum(stored_mask(r.rows)) == small.nnz
    assert np.sum(densify(r.rows) != 0) == small.nnz - 2


def test_from_sparse_and_dask_keep_values(small):
    A, _ = dense_and_mask(small)
    for x in (sparse.COO.from_scipy_sparse(small), sparse.GCXS.from_scipy_sparse(small)):
        np.testing.assert_array_equal(densify(as_ratings(x).rows), A)
    d = da.from_array(sparse.COO.from_scipy_sparse(small), chunks=(8, 6), asarray=False)
    r = as_ratings(d)
    assert r.chunks == d.chunks
    np.testing.assert_array_equal(densify(r.rows), A)
    np.testing.assert_array_equal(densify(r.cols), A.T)
    assert r.nnz == small.nnz


def test_irregular_dask_chunks_are_rechunked_with_warning(small):
    d = da.from_array(sparse.COO.from_scipy_sparse(small), chunks=((10, 5, 15), (20,)),
                      asarray=False)
    with pytest.warns(UserWarning, match="irregular"):
        r = as_ratings(d)
    assert r.chunks[0] == (15, 15)
    np.testing.assert_array_equal(densify(r.rows), small.toarray())


def test_building_computes_nothing(small):
    d = da.from_array(sparse.COO.from_scipy_sparse(small), chunks=(8, 6), asarray=False)
    calls = []
    with dask.callbacks.Callback(pretask=lambda key, dsk, state: calls.append(key)):
        as_ratings(d)
    assert calls == []


def test_coo_triplets_and_sum_duplicates():
    r = Ratings.from_coo([0, 1, 1, 0], [2, 0, 0, 1], [1.0, 2.0, 3.0, 4.0], (2, 3),
                         sum_duplicates=True)
    np.testing.assert_array_equal(densify(r.rows), [[0, 4, 1], [5, 0, 0]])
    assert r.nnz == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(values=[1.0, np.nan]), r"non-finite.*nan.*row 1, column 1"),
        (dict(values=[1.0, np.inf]), r"non-finite"),
        (dict(row=[0, -1]), r"outside \[0, 3\).*-1"),
        (dict(col=[0, 4]), r"column indices are outside \[0, 4\).*first is 4"),
        (dict(row=[1, 1], col=[2, 2]), r"1 duplicate.*row 1, column 2.*sum_duplicates=True"),
        (dict(values=[1.0]), r"same length"),
        (dict(values=["a", "b"]), r"real numbers"),
        (dict(row=[0.5, 1]), r"must be integers"),
        (dict(shape=(0, 4)), r"positive"),
    ],
)
def test_bad_triplets(kwargs, message):
    args = dict(row=[0, 1], col=[0, 1], values=[1.0, 2.0], shape=(3, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Ratings.from_coo(args["row"], args["col"], args["values"], args["shape"])


def test_duplicates_in_scipy_input_are_refused():
    m = scipy.sparse.coo_matrix(([1.0, 2.0], ([0, 0], [1, 1])), shape=(2, 2))
    with pytest.raises(ValueError, match="duplicate"):
        as_ratings(m)
    r = as_ratings(m, sum_duplicates=True)
    assert densify(r.rows)[0, 1] == 3.0


def test_bad_types_and_lazy_nan():
    with pytest.raises(TypeError, match="dense arrays are refused"):
        as_ratings(np.ones((3, 3)))
    with pytest.raises(TypeError, match="sparse blocks"):
        as_ratings(da.ones((4, 4), chunks=2))
    with pytest.raises(ValueError, match="fill_value"):
        as_ratings(sparse.COO.from_numpy(np.ones((2, 2)), fill_value=1.0))
    bad = sparse.COO(np.array([[0], [1]]), np.array([np.nan]), shape=(3, 3))
    r = as_ratings(da.from_array(bad, chunks=2, asarray=False))
    with pytest.raises(ValueError, match="non-finite"):
        densify(r.rows)


def test_random_ratings_helper_shapes():
    m = random_ratings(10, 8, 0.5, seed=0, empty_rows=(1,), empty_cols=(2,))
    assert m.getnnz(axis=1)[1] == 0 and m.getnnz(axis=0)[2] == 0
