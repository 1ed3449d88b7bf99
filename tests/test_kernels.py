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


# ------------------------------------------------------------ solver paths (issue 5)
METHODS = ["cholesky", "woodbury", "auto"]


def _formula(indptr, ind, data, ew, r, cg, vg, base, w0, ridge=None):
    """Every row's k × k normal equations solved by numpy.linalg.solve (0 for empty rows)."""
    n, k = indptr.shape[1] - 1, base.shape[0]
    x = np.zeros((n, k))
    for i in range(n):
        pos = np.concatenate([np.arange(indptr[j, i], indptr[j, i + 1])
                              for j in range(indptr.shape[0])]).astype(int)
        if pos.size == 0:
            continue
        v = vg[ind[pos]]
        w = r[i] * cg[ind[pos]] * (ew[pos] if ew.size else 1.0)
        lhs = base + (v * w[:, None]).T @ v + (0.0 if ridge is None else ridge[i]) * np.eye(k)
        x[i] = np.linalg.solve(lhs, v.T @ ((w0 + w) * data[pos]))
    return x


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [3, 13, 24, 64])
@pytest.mark.parametrize("with_ew", [False, True])
@pytest.mark.parametrize("with_ridge", [False, True])
def test_solve_paths_match_twin_and_formula(method, k, with_ew, with_ridge):
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(40, 50, k, 0.3, k, (0.4,), with_ew)
    ridge = np.random.default_rng(1).random(40) if with_ridge else None
    args = (indptr, ind, data, ew, r, cg, vg, base, 0.3, True)
    x_fast, x_ref = np.zeros((40, k)), np.zeros((40, k))
    info, info_ref = {}, {}
    assert _kernels.solve_block(*args, x_fast, ridge, method, info=info) == (-1, 0)
    assert _reference.solve_block(*args, x_ref, ridge, method, info=info_ref) == (-1, 0)
    np.testing.assert_allclose(x_fast, x_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x_fast, _formula(*args[:-1], ridge), rtol=1e-9, atol=1e-12)
    # the same rows took the same path, and the path under test did run
    assert info == info_ref
    nonempty = np.count_nonzero(_kernels.row_counts(indptr))
    if method == "woodbury":
        assert info["woodbury_rows"] == (nonempty if k >= 8 else 0)
    if method == "cholesky":
        assert info["woodbury_rows"] == 0


def test_auto_takes_woodbury_only_where_it_pays():
    """Short rows sharing factor rows: Woodbury. Short rows that each touch their own
    factor rows: rotating those rows would cost more than it saves, so Cholesky."""
    k, n = 64, 200
    rng = np.random.default_rng(0)
    base = np.eye(k)
    for q, shared in ((60, True), (n * 10, False)):
        indptr = np.arange(0, 10 * n + 1, 10)[None, :]
        ind = rng.integers(0, q, 10 * n) if shared else np.arange(10 * n)
        args = (indptr, ind, rng.random(10 * n), np.zeros(0), np.full(n, 9.0), np.ones(q),
                rng.standard_normal((q, k)), base, 1.0, True)
        x, info, info_ref = np.zeros((n, k)), {}, {}
        _kernels.solve_block(*args, x, info=info)
        _reference.solve_block(*args, np.zeros((n, k)), info=info_ref)
        assert info == info_ref
        assert info["woodbury_rows"] == (n if shared else 0)
        np.testing.assert_allclose(x, _formula(*args[:-1]), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_long_rows_and_k_not_a_multiple_of_the_block(method):
    """Rows of 1 to several tiles of entries, k = 37 (padded to 40 inside the kernels)."""
    n, m, k = 6, 4 * TILE + 3, 37
    (indptr, ind, data, ew, cg, vg, r, base), A, *_ = _stacked(n, m, k, 0.7, 2, (0.3, 0.6))
    assert np.diff(A.indptr).max() > 2 * TILE
    x = np.zeros((n, k))
    assert _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.2, True, x,
                                method=method) == (-1, 0)
    np.testing.assert_allclose(x, _formula(indptr, ind, data, ew, r, cg, vg, base, 0.2),
                               rtol=1e-9)


def test_woodbury_needs_a_definite_base_else_cholesky_decides():
    """base = 0 (W0 = 0, no λ): no Woodbury; a short row is singular and is reported."""
    k = 24
    rng = np.random.default_rng(0)
    indptr = np.array([[0, 30, 33]])  # row 0: 30 entries, row 1: 3 entries (< k)
    vg, ind, data = rng.standard_normal((33, k)), np.arange(33), rng.random(33)
    args = (indptr, ind, data, np.zeros(0), np.ones(2), np.ones(33), vg, np.zeros((k, k)),
            0.0, True)
    x, info = np.zeros((2, k)), {}
    assert _kernels.solve_block(*args, x, method="woodbury", info=info) == (1, 3)
    assert info == {} or info["woodbury_rows"] == 0
    assert np.all(np.isfinite(x))
    assert _reference.solve_block(*args, np.zeros((2, k)), method="woodbury") == (1, 3)
    # a ridge makes β > 0: now the short row is Woodbury's and exact
    ridge = np.array([0.5, 0.5])
    x, info = np.zeros((2, k)), {}
    assert _kernels.solve_block(*args, x, ridge, "woodbury", info=info) == (-1, 0)
    assert info["woodbury_rows"] >= 1
    np.testing.assert_allclose(x, _formula(*args[:-1], ridge), rtol=1e-9)


def test_negative_entry_weights_take_the_cholesky_path():
    """w_ij < 0 (allowed while the system stays definite) has no square root: Cholesky."""
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(30, 40, 24, 0.2, 5, (), True)
    ew = ew.copy()
    ew[::7] = -0.05
    args = (indptr, ind, data, ew, r, cg, vg, base + 5 * np.eye(24), 0.3, True)
    x, info = np.zeros((30, 24)), {}
    assert _kernels.solve_block(*args, x, method="woodbury", info=info) == (-1, 0)
    np.testing.assert_allclose(x, _formula(*args[:-1]), rtol=1e-9)
    rows_with_negative = len({int(np.searchsorted(indptr[0], p, "right") - 1)
                              for p in range(0, ind.size, 7)})
    assert info["woodbury_rows"] <= 30 - rows_with_negative


def test_als_rows_need_no_factorisation():
    """R = 0 (plain ALS): every row solves base·x = W0 Vᵀa, on the Woodbury path."""
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(30, 200, 64, 0.5, 9)
    args = (indptr, ind, data, ew, np.zeros(30), cg, vg, base, 0.4, True)
    x, info = np.zeros((30, 64)), {}
    _kernels.solve_block(*args, x, info=info)
    assert info["woodbury_rows"] == 30  # ≈ 100 entries per row, yet no weighted entry
    np.testing.assert_allclose(x, _formula(*args[:-1]), rtol=1e-9)


def test_frequency_scaled_ridge():
    """ridge = λ·n_i (ALS-WR) equals adding λ n_i I to row i's equations."""
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(30, 40, 6, 0.3, 4, (0.5,))
    counts = _kernels.row_counts(indptr)
    assert counts.tolist() == [indptr[:, i + 1].sum() - indptr[:, i].sum() for i in range(30)]
    ridge = 0.1 * counts
    x = np.zeros((30, 6))
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.3, True, x, ridge)
    np.testing.assert_allclose(
        x, _formula(indptr, ind, data, ew, r, cg, vg, base, 0.3, ridge), rtol=1e-9)


def test_badly_conditioned_rows_stay_exact():
    """Huge weights on nearly parallel rows: the residual check sends them to Cholesky."""
    k = 32
    rng = np.random.default_rng(3)
    direction = rng.standard_normal(k)
    vg = direction + 1e-7 * rng.standard_normal((10, k))
    indptr = np.array([[0, 10]])
    args = (indptr, np.arange(10), rng.random(10), np.full(10, 1e6), np.ones(1), np.ones(10),
            vg, 1e-2 * np.eye(k), 1.0, True)
    lhs = 1e6 * vg.T @ vg + 1e-2 * np.eye(k)
    rhs = vg.T @ ((1.0 + 1e6) * args[2])
    x, info = np.zeros((1, k)), {}
    assert _kernels.solve_block(*args, x, method="woodbury", info=info) == (-1, 0)
    assert info["woodbury_rows"] == 0  # the t × t system is too ill-conditioned here
    # backward error as small as a Cholesky solve's
    assert np.linalg.norm(lhs @ x[0] - rhs) <= 1e-12 * np.linalg.norm(lhs) * np.linalg.norm(x)


@pytest.mark.parametrize("method", METHODS)
def test_float32_factor_rows_give_the_float64_answer(method):
    """Stored float32 factors may be passed as they are: every value is widened to
    float64 as it is read, so the result equals that of the same values in float64."""
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(40, 60, 24, 0.3, 12, (0.5,))
    vg32 = vg.astype(np.float32)
    base = vg32.astype(np.float64).T @ vg32.astype(np.float64) + 0.1 * np.eye(24)
    x32, x64 = np.zeros((40, 24)), np.zeros((40, 24))
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg32, base, 0.3, True, x32,
                         method=method)
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg32.astype(np.float64), base, 0.3, True,
                         x64, method=method)
    np.testing.assert_array_equal(x32, x64)
    x = x64.copy()
    _kernels.cg_block(indptr, ind, data, ew, r, cg, vg32, base, 0.3, True, x32, 2)
    _kernels.cg_block(indptr, ind, data, ew, r, cg, vg32.astype(np.float64), base, 0.3, True,
                      x, 2)
    np.testing.assert_array_equal(x32, x)
    np.testing.assert_array_equal(
        _kernels.loss_block(indptr, ind, data, ew, r, cg, x, vg32),
        _kernels.loss_block(indptr, ind, data, ew, r, cg, x, vg32.astype(np.float64)))


def test_unknown_method_is_refused():
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(4, 5, 2, 0.5, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.1, True,
                             np.zeros((4, 2)), method="qr")


def test_non_contiguous_output_is_written():
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(20, 30, 5, 0.3, 6)
    full = np.zeros((5, 20)).T  # Fortran-ordered view
    _kernels.solve_block(indptr, ind, data, ew, r, cg, vg, base, 0.3, True, full)
    np.testing.assert_allclose(full, _formula(indptr, ind, data, ew, r, cg, vg, base, 0.3),
                               rtol=1e-9)


# ------------------------------------------------------------------------------ CG
@pytest.mark.parametrize("with_ew", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_cg_matches_twin(with_ew, steps):
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(40, 30, 8, 0.3, 8, (0.5,), with_ew)
    start = np.random.default_rng(2).standard_normal((40, 8))
    ridge = np.full(40, 0.2)
    x_fast, x_ref = start.copy(), start.copy()
    args = (indptr, ind, data, ew, r, cg, vg, base, 0.3, True)
    assert _kernels.cg_block(*args, x_fast, steps, ridge) == (-1, 0)
    assert _reference.cg_block(*args, x_ref, steps, ridge) == (-1, 0)
    np.testing.assert_allclose(x_fast, x_ref, rtol=1e-9, atol=1e-12)


def test_cg_is_approximate_and_converges_with_steps():
    (indptr, ind, data, ew, cg, vg, r, base), *_ = _stacked(40, 30, 8, 0.3, 8, (0.5,))
    args = (indptr, ind, data, ew, r, cg, vg, base + np.eye(8), 0.3, True)
    exact = _formula(*args[:-1])
    start = np.zeros((40, 8))
    errors = []
    for steps in (1, 3, 8):
        x = start.copy()
        _kernels.cg_block(*args, x, steps)
        errors.append(np.abs(x - exact).max())
    assert errors[0] > errors[1] > 1e-12  # approximate after a few steps
    assert errors[2] < 1e-8 * np.abs(exact).max()  # k steps: exact in exact arithmetic
    x = exact.copy()  # warm start at the solution stays there
    _kernels.cg_block(*args, x, 3)
    np.testing.assert_allclose(x, exact, rtol=1e-9, atol=1e-12)


def test_cg_empty_and_singular_rows():
    (indptr, ind, data, ew, cg, vg, r, base), A, *_ = _stacked(20, 10, 3, 0.2, 11)
    empty = np.flatnonzero(np.diff(A.indptr) == 0)
    x = np.full((20, 3), 7.0)
    _kernels.cg_block(indptr, ind, data, ew, r, cg, vg, base, 0.1, False, x)
    np.testing.assert_array_equal(x[empty], 7.0)
    _kernels.cg_block(indptr, ind, data, ew, r, cg, vg, base, 0.1, True, x)
    np.testing.assert_array_equal(x[empty], 0.0)
    # base = 0 and no weighted entry (R = 0) but W0 > 0 puts the right-hand side outside
    # the range of A = 0: the first direction has zero curvature and the row is reported
    indptr = np.array([[0, 1]])
    x = np.ones((1, 4))
    out = _kernels.cg_block(indptr, np.array([0]), np.array([1.0]), np.zeros(0), np.zeros(1),
                            np.ones(1), np.eye(4)[:1], np.zeros((4, 4)), 1.0, True, x, 3)
    assert out == (0, 1)
    assert np.all(np.isfinite(x))


# ------------------------------------------------------- the same model as implicit
def _implicit_case(seed=0):
    """A small non-binary confidence matrix and the daskwals kernel inputs of its model.

    implicit minimises Σ c_ui (p_ui − x_u·y_i)² + λ(‖X‖² + ‖Y‖²) with c_ui = |C_ui| on
    stored entries (1 elsewhere) and p_ui = [C_ui > 0]: W0 = 1, data p, per-entry
    weights e = |C| − 1 (R = C = 1) and base = YᵀY + λI.
    """
    rng = np.random.default_rng(seed)
    n, m, k, lam = 60, 40, 6, 0.1
    C = scipy.sparse.random(n, m, density=0.2, random_state=seed, format="csr",
                            data_rvs=lambda s: rng.integers(1, 30, s).astype(float))
    C.data[::9] *= -1  # implicit's "disliked" entries: p = 0 with confidence |C|
    Y = rng.standard_normal((m, k)) * 0.3
    indptr = C.indptr[None, :].astype(np.int64)
    args = (indptr, C.indices.astype(np.int64), (C.data > 0).astype(float),
            np.abs(C.data) - 1.0, np.ones(n), np.ones(m), Y, Y.T @ Y + lam * np.eye(k), 1.0)
    return C, Y, lam, args


@pytest.mark.parametrize("method", METHODS)
def test_reproduces_implicit_cholesky_solves(method):
    als = pytest.importorskip("implicit.cpu._als")
    C, Y, lam, args = _implicit_case()
    X_implicit = np.zeros((C.shape[0], Y.shape[1]))
    als.least_squares(C, X_implicit, Y, lam, num_threads=1)
    x = np.zeros_like(X_implicit)
    assert _kernels.solve_block(*args, True, x, method=method) == (-1, 0)
    np.testing.assert_allclose(x, X_implicit, rtol=1e-8, atol=1e-10)


def test_reproduces_implicit_conjugate_gradient():
    als = pytest.importorskip("implicit.cpu._als")
    C, Y, lam, args = _implicit_case(1)
    start = np.random.default_rng(4).standard_normal((C.shape[0], Y.shape[1]))
    X_implicit = start.copy()
    als.least_squares_cg(C, X_implicit, Y, lam, num_threads=1, cg_steps=3)
    x = start.copy()
    assert _kernels.cg_block(*args, False, x, 3) == (-1, 0)
    np.testing.assert_allclose(x, X_implicit, rtol=1e-7, atol=1e-9)
