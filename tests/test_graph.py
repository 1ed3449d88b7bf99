"""Graph builders: tree-reduced Gramians, tree sums, chunk-independent initialisation."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from daskwals import _graph


@pytest.mark.parametrize("split_every", [None, 2, 3])
def test_gramian_tree_reduction(split_every):
    x = np.random.default_rng(0).standard_normal((101, 5)).astype(np.float32)
    g = _graph.gramian(da.from_array(x, chunks=(7, 5)), split_every)
    assert g.shape == (5, 5) and g.dtype == np.float64
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(g.compute(), x64.T @ x64, rtol=1e-12)
    if split_every == 2:  # 15 chunks in a binary tree: more than one level of combines
        assert len(g.__dask_graph__()) > 15 + 2


def test_gramian_of_column_chunked_factor():
    x = np.random.default_rng(1).standard_normal((20, 6))
    g = _graph.gramian(da.from_array(x, chunks=(5, 2)))
    np.testing.assert_allclose(g.compute(), x.T @ x, rtol=1e-12)


def test_tree_sum_of_arrays_and_tuples():
    parts = [dask.delayed((np.full(3, i), np.eye(2) * i)) for i in range(11)]
    total = _graph.tree_sum(parts, split_every=2).compute()
    np.testing.assert_array_equal(total[0], np.full(3, 55))
    np.testing.assert_array_equal(total[1], np.eye(2) * 55)
    with pytest.raises(ValueError, match="nothing to sum"):
        _graph.tree_sum([])


def test_random_rows_are_chunk_independent():
    whole = _graph.random_rows(7, "row", 0, 10_000, 3)
    pieces = np.concatenate([_graph.random_rows(7, "row", a, min(a + 999, 10_000), 3)
                             for a in range(0, 10_000, 999)])
    np.testing.assert_array_equal(whole, pieces)
    assert not np.allclose(whole[:10], _graph.random_rows(7, "col", 0, 10, 3))
    assert not np.allclose(whole[:10], _graph.random_rows(8, "row", 0, 10, 3))


def test_full_loss_formula():
    sums = np.array([4.0, 9.0, 2.0, 5.0])
    gu, gv = np.diag([1.0, 2.0]), np.array([[3.0, 1.0], [1.0, 4.0]])
    # W0 (s0 - s1) + s2 + W0 tr(GU GV) + λ (tr GU + tr GV)
    expected = 0.5 * (4 - 9) + 2 + 0.5 * (3 + 8) + 0.1 * (3 + 7)
    assert _graph.full_loss(sums, gu, gv, 0.5, 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_float32_factor_rows_are_gathered_as_float32_with_the_same_results(solver):
    """Gathered rows keep the factor's float32 (half the memory); the numbers do not move.

    The Cholesky path gives identical bits; the CG kernel's fast-math loops may be
    vectorised differently for float32 rows, so there the results agree to rounding.
    """
    import sparse

    from daskwals._blockops import gather_piece, solve_pieces

    rng = np.random.default_rng(4)
    block = sparse.random((60, 40), density=0.2, random_state=5, format="coo")
    factor32 = rng.standard_normal((40, 8)).astype(np.float32)
    pieces32 = [gather_piece(block, factor32, np.ones(40))]
    pieces64 = [gather_piece(block, factor32.astype(np.float64), np.ones(40))]
    assert pieces32[0].vg.dtype == np.float32 and pieces64[0].vg.dtype == np.float64
    base = 0.1 * factor32.astype(np.float64).T @ factor32 + 0.5 * np.eye(8)
    previous = rng.standard_normal((60, 8))
    kwargs = dict(dtype=np.float64, solver=solver, previous=previous)
    x32, sums32, gram32 = solve_pieces(pieces32, 60, np.full(60, 2.0), base, 0.1, **kwargs)
    x64, sums64, gram64 = solve_pieces(pieces64, 60, np.full(60, 2.0), base, 0.1, **kwargs)
    check = (np.testing.assert_array_equal if solver == "cholesky" else
             lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14))
    check(x32, x64)
    check(sums32, sums64)
    check(gram32, gram64)
