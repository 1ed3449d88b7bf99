"""The numba kernels against their NumPy twins and against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import sparse

from daskwals import _blockops, _kernels, _reference
from daskwals._kernels import TILE


def _stacked(n, m, k, density, seed, splits=(0.5,), with_ew=False):
    """Kernel inputs for an n × m block split into column pieces at ``splits``."""
    rng = np.random.default_rng(seed)
    A = scipy.sparse.random(n, m, density=density, random_state=seed, format="coo")
    coo = sparse.COO.from_scipy_sparse(A)
    V = rng.standard_normal((m, k))
    c = rng.random(m) + 0.5
    bounds = [0, *[int(s * m) for s in splits], m]
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ew = None
        if with_ew:
            ew = sparse.COO(coo[:, lo:hi].coords, rng.random(coo[:, lo:hi].nnz) + 0.1,
                            shape=(n, hi - lo))
        pieces.append(_blockops.gather_piece(coo[:, lo:hi], V[lo:hi], c[lo:hi], ew))
    r = rng.random(n) + 0.5
    base = 0.3 * V.T @ V + 0.05 * np.eye(k)
    return (*_blockops.stack_pieces(pieces, n), r, base), A.tocsr(), V, c


@pytest.mark.parametrize("with_ew", [False, True])
@pytest.mark.parametrize("splits", [(), (0.5,), (0.2, 0.3, 0.9)])
def test_solve_block_matches_twin(splits, with_ew):
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(40, 30, 6, 0.3, 3, splits, with_ew)
    x_fast, x_ref = np.zeros((40, 6)), np.zeros((40, 6))
    assert _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.3, True, x_fast) == (
        -1, 0)
    assert _reference.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.3, True, x_ref) == (
        -1, 0)
    np.testing.assert_allclose(x_fast, x_ref, rtol=1e-10, atol=1e-12)
    s_fast = _kernels.loss_block(indptr, ind, data, ew, r, cg, x_fast, vg)
    s_ref = _reference.loss_block(indptr, ind, data, ew, r, cg, x_fast, vg)
    np.testing.assert_allclose(s_fast, s_ref, rtol=1e-12)


def test_solve_block_matches_normal_equations_from_the_formula():
    """Rows longer than one tile, checked against the normal equations of DESIGN.md §1."""
    n, m, k, w0 = 5, 3 * TILE + 7, 4, 0.2
    (indptr, ind, data, ew, cg, vg, r, base), A, V, c = _stacked(n, m, k, 0.9, 7)
    x = np.zeros((n, k))
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, w0, True, x)
    for i in range(n):
        cols = A.indices[A.indptr[i]: A.indptr[i + 1]]
        vals = A.data[A.indptr[i]: A.indptr[i + 1]]
        assert cols.size > TILE
        w = r[i] * c[cols]
        lhs = base + (V[cols] * w[:, None]).T @ V[cols]
        rhs = V[cols].T @ ((w0 + w) * vals)
        np.testing.assert_allclose(x[i], np.linalg.solve(lhs, rhs), rtol=1e-9)


def test_known_answer_rank_one():
    """k = 1 by hand: (W0 g + λ + Σ w v²) u = Σ (W0 + w) a v."""
    # one row, entries at columns with v = 2 and v = 3, ratings 1 and 4, r = 1, c = 0.5, 1
    indptr = np.array([[0, 2]])
    ind = np.array([0, 1])
    data = np.array([1.0, 4.0])
    vg = np.array([[2.0], [3.0]])
    cg = np.array([0.5, 1.0])
    base = np.array([[0.1 * 20.0 + 0.5]])  # W0 = 0.1, G = 20, λ = 0.5
    x = np.zeros((1, 1))
    _kernels.solve_block(indptr, ind, data, np.zeros(0), np.ones(1), cg, vg, base, 0.1, True, x)
    lhs = 2.5 + 0.5 * 4 + 1.0 * 9  # 13.5
    rhs = (0.1 + 0.5) * 1 * 2 + (0.1 + 1.0) * 4 * 3  # 1.2 + 13.2 = 14.4
    assert x[0, 0] == pytest.approx(rhs / lhs, rel=1e-14)
    sums = _kernels.loss_block(indptr, ind, data, np.zeros(0), np.ones(1), cg, x, vg)
    p = x[0, 0] * np.array([2.0, 3.0])
    err = data - p
    np.testing.assert_allclose(
        sums, [np.sum(err**2), np.sum(p**2), 0.5 * err[0] ** 2 + err[1] ** 2, 1.5], rtol=1e-13
    )


def test_empty_rows_zero_or_untouched():
    (indptr, ind, data, ew, cg, vg, r, base), A, *_ = _stacked(20, 10, 3, 0.2, 11)
    empty = np.flatnonzero(np.diff(A.indptr) == 0)
    assert empty.size
    x = np.full((20, 3), 7.0)
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.1, False, x)
    np.testing.assert_array_equal(x[empty], 7.0)
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.1, True, x)
    np.testing.assert_array_equal(x[empty], 0.0)


def test_singular_row_is_reported_not_nan():
    """W0 = 0, λ = 0 and fewer entries than k: the kernel names the row instead of NaN."""
    k = 4
    indptr = np.array([[0, 5, 7]])  # row 0: 5 entries, row 1: 2 entries (< k)
    rng = np.random.default_rng(0)
    vg = rng.standard_normal((7, k))
    ind = np.arange(7)
    data = rng.random(7)
    x = np.zeros((2, k))
    out = _kernels.solve_block(indptr, ind, data, np.zeros(0), np.ones(2), np.ones(7), vg,
                               np.zeros((k, k)), 0.0, True, x)
    assert out == (1, 2)
    assert np.all(np.isfinite(x))
    ref = _reference.solve_block(indptr, ind, data, np.zeros(0), np.ones(2), np.ones(7), vg,
                                 np.zeros((k, k)), 0.0, True, np.zeros((2, k)))
    assert ref == (1, 2)


def test_solve_pieces_raises_clear_error():
    k = 3
    piece = _blockops.Piece(rows=np.array([0]), cols=np.array([0]), data=np.array([1.0]),
                            vg=np.ones((1, k)), cg=np.ones(1))
    with pytest.raises(_blockops.SingularSystemError, match=r"row 10 .*regularization"):
        _blockops.solve_pieces([piece], 1, np.ones(1), np.zeros((k, k)), 0.0, dtype="float64",
                               row_offset=10, context={"axis": "row", "regularization": None,
                                                       "unobserved_weight": 0.0})


def test_gather_piece_keeps_only_touched_rows():
    block = sparse.COO(np.array([[0, 0, 2], [4, 1, 4]]), np.array([1.0, 2.0, 3.0]), shape=(3, 6))
    factor = np.arange(12.0).reshape(6, 2)
    piece = _blockops.gather_piece(block, factor, np.arange(6.0))
    np.testing.assert_array_equal(piece.vg, factor[[1, 4]])
    np.testing.assert_array_equal(piece.cg, [1.0, 4.0])
    np.testing.assert_array_equal(piece.rows, [0, 0, 2])
    np.testing.assert_array_equal(piece.vg[piece.cols], factor[[1, 4, 4]])
