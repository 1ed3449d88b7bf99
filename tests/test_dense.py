"""The dense building blocks of the kernels (register-blocked SYRK, blocked Cholesky)."""

from __future__ import annotations

import numpy as np
import pytest

from daskwals import _dense


def _spd(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + 3, n))
    return x.T @ x + 0.5 * np.eye(n)


def _padded_copy(a, fill=np.nan):
    """``a`` in a buffer padded to the block size, scratch filled with ``fill``."""
    n = a.shape[0]
    top = _dense.padded(n)
    out = np.full((top, top), fill)
    out[:n, :n] = np.triu(a) + np.tril(np.full((n, n), fill), -1)
    return out


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 16, 31, 32, 33, 64, 100, 130])
def test_cholesky_upper_and_solve_match_numpy(n):
    """Only the upper triangle is read: NaN in the lower triangle and padding is ignored."""
    a = _spd(n, n)
    buf = _padded_copy(a)
    with _dense.compile_with_slp():
        assert _dense.cholesky_upper(buf, n)
        u = np.triu(buf[:n, :n])
        np.testing.assert_allclose(u.T @ u, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
        np.testing.assert_allclose(u, np.linalg.cholesky(a).T, rtol=1e-10, atol=1e-12)
        b = np.arange(1.0, n + 1)
        x = np.zeros(_dense.padded(n))
        x[:n] = b
        _dense.cho_solve_upper(buf, n, x)
    np.testing.assert_allclose(x[:n], np.linalg.solve(a, b), rtol=1e-9)


@pytest.mark.parametrize("a", [
    np.zeros((3, 3)),
    np.ones((4, 4)),  # rank one
    np.diag([1.0, -1.0, 2.0]),  # indefinite
    np.diag([1.0, 1e-15, 1.0]),  # singular to working precision
    np.full((2, 2), np.nan),
])
def test_cholesky_upper_refuses_singular_and_indefinite(a):
    with _dense.compile_with_slp():
        assert not _dense.cholesky_upper(_padded_copy(a, fill=0.0), a.shape[0])


@pytest.mark.parametrize("k", [1, 5, 8, 20, 64])
@pytest.mark.parametrize("n", [1, 9, 37])
def test_syrk_upper_matches_numpy(k, n):
    rng = np.random.default_rng(k * 100 + n)
    top = _dense.padded(k)
    x = np.zeros((n, top))
    y = np.zeros((n, top))
    x[:, :k] = rng.standard_normal((n, k))
    y[:, :k] = rng.standard_normal((n, k))
    a = np.ones((top, top))
    with _dense.compile_with_slp():
        _dense.syrk_upper(a, x, y, n, 0, k, -2.0)
    expected = np.ones((k, k)) - 2.0 * x[:, :k].T @ y[:, :k]
    np.testing.assert_allclose(np.triu(a[:k, :k]), np.triu(expected), rtol=1e-12, atol=1e-12)


def test_gemm_acc_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 24))
    y = rng.standard_normal((13, 16))
    a = np.zeros((24, 16))
    with _dense.compile_with_slp():
        _dense.gemm_acc(a, x, y, 13, 20, 16)
    np.testing.assert_allclose(a[:20], x[:, :20].T @ y, rtol=1e-12)


def test_padded():
    assert [_dense.padded(n) for n in (0, 1, 8, 9, 64, 65)] == [0, 8, 8, 16, 64, 72]
