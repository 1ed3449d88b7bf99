"""Small dense linear algebra for the numba kernels: blocked SYRK/GEMM, Cholesky, solves.

No dask import, no BLAS call: everything runs inside the calling dask thread, so one
dask thread is one core and no thread pool nests inside another.

Speed comes from one register-blocked micro-kernel, :func:`_tile8x8`, that adds
``Σ_p x[p, i0:i0+8]ᵀ · y[p, j0:j0+8]`` to an 8 × 8 block of ``a``. Its 64 accumulators
are plain local variables; LLVM's SLP vectoriser keeps them in eight vector registers
and turns each step ``p`` into one vector load and eight broadcast FMAs (AVX-512 on the
development machine: 45–64 GFLOP/s on one core, against 56–72 for OpenBLAS DGEMM).
The SLP vectoriser is off in numba by default, so :func:`compile_with_slp` switches it
on while the callers' kernels compile (the machine code then stays in their on-disk
cache). Indices are unsigned on purpose: numba adds a negative-index wraparound to
signed indices, which hides the contiguous loads from the vectorisers (3× slower
row operations in the Cholesky, measured).

numba's on-disk cache of the kernels in :mod:`daskwals._kernels` holds this module's code
inlined and does not notice edits here: after changing this file, touch _kernels.py.

Every 2-d buffer handed to these functions has both dimensions padded to a multiple of
8 (see :func:`padded`); rows and columns past the logical size are scratch, never read
back as results. Only the upper triangle of a symmetric matrix is ever read.
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np

#: Side of the register block; buffers are padded to a multiple of it.
BLOCK = 8
#: Rows per panel of the blocked Cholesky (a multiple of BLOCK).
PANEL = 32

# Kernels that must not be vectorised along the reduction index: no "reassoc".
_jit_tile = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
# Everything else: reassociation lets LLVM vectorise dot products. NaN/inf semantics
# are kept (no "nnan"/"ninf") because the pivot tests rely on them.
_jit = numba.njit(
    cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy"
)

_slp_lock = threading.Lock()


@contextlib.contextmanager
def compile_with_slp():
    """Enable numba's SLP vectoriser while the enclosed code compiles kernels.

    ``numba.config`` is global: another thread compiling at the same moment gets the
    SLP vectoriser too, which changes its speed, never its results.
    """
    with _slp_lock:
        previous = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = previous


def padded(n):
    """``n`` rounded up to a multiple of :data:`BLOCK`."""
    return -(-int(n) // BLOCK) * BLOCK


@_jit_tile
def _tile8x8(a, x, y, n, i0, j0, alpha):
    """``a[i0+i, j0+j] += alpha · Σ_{p<n} x[p, i0+i] · y[p, j0+j]`` for i, j in 0..7.

    ``s{jj}{ii}`` accumulates entry (i0 + ii, j0 + jj). For each ii the eight sums
    ``s0{ii} … s7{ii}`` (row i0 + ii of the block) share one vector register: y[p, j0:j0+8]
    is loaded once per step and x[p, i0+ii] is broadcast into that row's FMA. Do not
    reorder these statements without checking the generated code (no permutes in the
    write-back, no vectorisation along p).
    """
    i = np.uint64(i0)
    j = np.uint64(j0)
    one = np.uint64(1)
    s00 = s01 = s02 = s03 = s04 = s05 = s06 = s07 = 0.0
    s10 = s11 = s12 = s13 = s14 = s15 = s16 = s17 = 0.0
    s20 = s21 = s22 = s23 = s24 = s25 = s26 = s27 = 0.0
    s30 = s31 = s32 = s33 = s34 = s35 = s36 = s37 = 0.0
    s40 = s41 = s42 = s43 = s44 = s45 = s46 = s47 = 0.0
    s50 = s51 = s52 = s53 = s54 = s55 = s56 = s57 = 0.0
    s60 = s61 = s62 = s63 = s64 = s65 = s66 = s67 = 0.0
    s70 = s71 = s72 = s73 = s74 = s75 = s76 = s77 = 0.0
    for p in range(np.uint64(n)):
        xp = x[p]
        yp = y[p]
        x0 = xp[i]
        x1 = xp[i + one]
        x2 = xp[i + np.uint64(2)]
        x3 = xp[i + np.uint64(3)]
        x4 = xp[i + np.uint64(4)]
        x5 = xp[i + np.uint64(5)]
        x6 = xp[i + np.uint64(6)]
        x7 = xp[i + np.uint64(7)]
        yv = yp[j]
        s00, s01, s02, s03, s04, s05, s06, s07 = (
            s00 + yv * x0, s01 + yv * x1, s02 + yv * x2, s03 + yv * x3,
            s04 + yv * x4, s05 + yv * x5, s06 + yv * x6, s07 + yv * x7,
        )
        yv = yp[j + one]
        s10, s11, s12, s13, s14, s15, s16, s17 = (
            s10 + yv * x0, s11 + yv * x1, s12 + yv * x2, s13 + yv * x3,
            s14 + yv * x4, s15 + yv * x5, s16 + yv * x6, s17 + yv * x7,
        )
        yv = yp[j + np.uint64(2)]
        s20, s21, s22, s23, s24, s25, s26, s27 = (
            s20 + yv * x0, s21 + yv * x1, s22 + yv * x2, s23 + yv * x3,
            s24 + yv * x4, s25 + yv * x5, s26 + yv * x6, s27 + yv * x7,
        )
        yv = yp[j + np.uint64(3)]
        s30, s31, s32, s33, s34, s35, s36, s37 = (
            s30 + yv * x0, s31 + yv * x1, s32 + yv * x2, s33 + yv * x3,
            s34 + yv * x4, s35 + yv * x5, s36 + yv * x6, s37 + yv * x7,
        )
        yv = yp[j + np.uint64(4)]
        s40, s41, s42, s43, s44, s45, s46, s47 = (
            s40 + yv * x0, s41 + yv * x1, s42 + yv * x2, s43 + yv * x3,
            s44 + yv * x4, s45 + yv * x5, s46 + yv * x6, s47 + yv * x7,
        )
        yv = yp[j + np.uint64(5)]
        s50, s51, s52, s53, s54, s55, s56, s57 = (
            s50 + yv * x0, s51 + yv * x1, s52 + yv * x2, s53 + yv * x3,
            s54 + yv * x4, s55 + yv * x5, s56 + yv * x6, s57 + yv * x7,
        )
        yv = yp[j + np.uint64(6)]
        s60, s61, s62, s63, s64, s65, s66, s67 = (
            s60 + yv * x0, s61 + yv * x1, s62 + yv * x2, s63 + yv * x3,
            s64 + yv * x4, s65 + yv * x5, s66 + yv * x6, s67 + yv * x7,
        )
        yv = yp[j + np.uint64(7)]
        s70, s71, s72, s73, s74, s75, s76, s77 = (
            s70 + yv * x0, s71 + yv * x1, s72 + yv * x2, s73 + yv * x3,
            s74 + yv * x4, s75 + yv * x5, s76 + yv * x6, s77 + yv * x7,
        )
    _add_row(a[i], j, alpha, s00, s10, s20, s30, s40, s50, s60, s70)
    _add_row(a[i + one], j, alpha, s01, s11, s21, s31, s41, s51, s61, s71)
    _add_row(a[i + np.uint64(2)], j, alpha, s02, s12, s22, s32, s42, s52, s62, s72)
    _add_row(a[i + np.uint64(3)], j, alpha, s03, s13, s23, s33, s43, s53, s63, s73)
    _add_row(a[i + np.uint64(4)], j, alpha, s04, s14, s24, s34, s44, s54, s64, s74)
    _add_row(a[i + np.uint64(5)], j, alpha, s05, s15, s25, s35, s45, s55, s65, s75)
    _add_row(a[i + np.uint64(6)], j, alpha, s06, s16, s26, s36, s46, s56, s66, s76)
    _add_row(a[i + np.uint64(7)], j, alpha, s07, s17, s27, s37, s47, s57, s67, s77)


@_jit_tile
def _add_row(row, j, alpha, s0, s1, s2, s3, s4, s5, s6, s7):
    """``row[j:j+8] += alpha · (s0, …, s7)``."""
    row[j] += alpha * s0
    row[j + np.uint64(1)] += alpha * s1
    row[j + np.uint64(2)] += alpha * s2
    row[j + np.uint64(3)] += alpha * s3
    row[j + np.uint64(4)] += alpha * s4
    row[j + np.uint64(5)] += alpha * s5
    row[j + np.uint64(6)] += alpha * s6
    row[j + np.uint64(7)] += alpha * s7


@_jit
def padded_nb(n):
    """``n`` rounded up to a multiple of :data:`BLOCK` (inside kernels)."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


@_jit
def syrk_upper(a, w, v, n, lo, hi, alpha):
    """``a[i, j] += alpha · Σ_{p<n} w[p, i] · v[p, j]`` on the upper triangle lo ≤ i ≤ j < hi.

    ``lo`` must be a multiple of :data:`BLOCK` and ``hi`` is rounded up to one (``a``,
    ``w`` and ``v`` need that many columns; what lies past ``hi`` only reaches the
    padding of ``a``). Diagonal blocks are updated whole, so the entries just below the
    diagonal receive sums too: the lower triangle is scratch. With ``w = d ⊙ v`` this is
    the weighted SYRK ``a += vᵀ diag(d) v``.
    """
    syrk_upper_rows(a, w, v, n, lo, hi, hi, alpha)


@_jit
def syrk_upper_rows(a, w, v, n, lo, row_hi, hi, alpha):
    """:func:`syrk_upper` restricted to the rows lo ≤ i < row_hi (columns i ≤ j < hi)."""
    top = padded_nb(hi)
    for i0 in range(lo, padded_nb(row_hi), BLOCK):
        for j0 in range(i0, top, BLOCK):
            _tile8x8(a, w, v, n, i0, j0, alpha)


@_jit
def gemm_acc(a, w, v, n, rows, cols):
    """``a[i, j] += Σ_{p<n} w[p, i] · v[p, j]`` for all i < rows, j < cols (rounded up)."""
    for i0 in range(0, padded_nb(rows), BLOCK):
        for j0 in range(0, padded_nb(cols), BLOCK):
            _tile8x8(a, w, v, n, i0, j0, 1.0)


@_jit
def cholesky_upper(a, n):
    """Cholesky factor U (A = UᵀU) of ``a[:n, :n]`` in place, in the upper triangle.

    Only the upper triangle of ``a`` is read. Right-looking and blocked twice: rows are
    finished :data:`BLOCK` at a time with vectorised row operations (rows are
    contiguous), each such group updates the rest of its panel of :data:`PANEL` rows
    and every finished panel updates the trailing matrix, both through the
    micro-kernel reading the finished rows in place. All but O(n²·BLOCK) of the n³/3
    flops run in the micro-kernel. Returns False when a pivot is not safely positive
    (singular or indefinite in floating point); ``a`` is then garbage.
    """
    # Relative pivot threshold: a pivot this small compared with the largest diagonal
    # entry means the matrix is numerically singular.
    scale = 0.0
    for i in range(n):
        if a[i, i] > scale:
            scale = a[i, i]
    if not scale > 0.0:
        return False
    tiny = scale * 1e-13
    nu = np.uint64(n)  # unsigned indices: no negative-index wraparound in the loops
    for pb in range(0, n, PANEL):
        pe = min(pb + PANEL, n)
        for jb in range(pb, pe, BLOCK):
            je = min(jb + BLOCK, pe)
            for j in range(jb, je):
                # earlier rows of this group (everything before is already applied)
                ju = np.uint64(j)
                for p in range(np.uint64(jb), ju):
                    u = a[p, ju]
                    for i in range(ju, nu):
                        a[ju, i] -= u * a[p, i]
                d = a[ju, ju]
                if not d > tiny:
                    return False
                d = np.sqrt(d)
                inv = 1.0 / d
                a[ju, ju] = d
                for i in range(ju + np.uint64(1), nu):
                    a[ju, i] *= inv
            if je < pe:
                # the rest of the panel: rows je..pe-1 -= (rows jb..je-1)ᵀ (rows jb..je-1)
                syrk_upper_rows(a, a[jb:je], a[jb:je], je - jb, je, pe, n, -1.0)
        if pe < n:
            # trailing update A22 -= U12ᵀ U12 with the panel's rows pb..pe-1
            syrk_upper(a, a[pb:pe], a[pb:pe], pe - pb, pe, n, -1.0)
    return True


@_jit
def cho_solve_upper(a, n, b):
    """Solve (UᵀU) x = b in place in ``b[:n]``, U from :func:`cholesky_upper` in ``a``."""
    # forward Uᵀ y = b: once y_i is known, subtract y_i · U[i, i+1:] from the rest
    nu = np.uint64(n)
    one = np.uint64(1)
    for i in range(nu):
        yi = b[i] / a[i, i]
        b[i] = yi
        for p in range(i + one, nu):
            b[p] -= yi * a[i, p]
    # backward U x = y: a dot product per row
    for ii in range(nu):
        i = nu - one - ii
        s = b[i]
        for p in range(i + one, nu):
            s -= a[i, p] * b[p]
        b[i] = s / a[i, i]
