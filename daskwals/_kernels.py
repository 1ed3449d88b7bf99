"""Numba block kernels for the WALS normal equations, solves and loss.

This module has no dask import. Every kernel works on one *row block*: the rows of
the block are described by a stacked CSR layout that lets several column blocks of
the ratings share one call without merging them:

``indptr``   int64 (J, n_rows + 1). The stored entries of row ``r`` that came from
             column block ``j`` are ``indices[indptr[j, r]:indptr[j, r + 1]]``.
``indices``  int64 (nnz,). Positions into ``vg``, the gathered fixed-factor rows.
``data``     float64 (nnz,). The ratings A_ij.
``ew``       float64 (nnz,) or (0,). Per-entry weight multipliers e_ij (none: all ones).
``r``        float64 (n_rows,). Row weights R_i of the block.
``cg``       float64 (q,). Column weights C_j, aligned with ``vg``.
``vg``       float64 or float32 (q, k). The fixed factor's rows that the block's entries
             touch. float32 (the stored precision) halves the memory traffic of the
             gathers; every value is widened to float64 as it is read, so the result
             is the same as with the float64 copy of those values.
``ridge``    float64 (n_rows,) or (0,). An extra ridge d_i per row (none: zeros), e.g.
             λ·n_i for frequency-scaled regularisation (Spark's ALS-WR).

With w_ij = R_i * C_j * e_ij, row ``i``'s normal equations are (DESIGN.md §1)::

    (W0·G + λI + d_i I + Σ_{j∈S_i} w_ij v_j v_jᵀ) u_i = Σ_{j∈S_i} (W0 + w_ij) A_ij v_j

where ``base`` = W0·G + λI is computed once per sweep. Everything is accumulated and
solved in float64. Two exact ways to solve them:

*Cholesky* (any row): gather the row's factor rows in tiles of :data:`TILE`, add
``Vᵀ diag(w) V`` to a copy of ``base`` with the register-blocked SYRK of
:mod:`daskwals._dense`, then a blocked Cholesky and two triangular solves:
≈ t·k² + k³/3 flops for a row with t stored entries.

*Woodbury* (rows with few weighted entries): with base = Q diag(λ) Qᵀ (one eigen-
decomposition per sweep and process, cached), β = λ + d_i and the rotated rows
ṽ_j = Qᵀ v_j, the push-through identity gives the same solution from a t × t system
instead of k × k::

    S = D^½ Ṽ diag(β)^-½ (t × k),  ζ = β^-½ ⊙ Ṽᵀc,  (I + S Sᵀ) s = S ζ,
    u_i = Q (β^-½ ⊙ (ζ − Sᵀ s))

(D = diag(w), c_j = (W0 + w_j) A_ij): ≈ t²·k + t³/3 + 2k² flops, plus k² per gathered
row rotated (shared by the block's rows). It needs base + d_i I positive definite and
w ≥ 0; every Woodbury solution is checked by its residual in the original equations
and re-solved by Cholesky when the check fails, so the answer is always the exact
solve to working precision. Entries with w_ij = 0 only enter the right-hand side, so
plain ALS rows (all w = 0) cost O(t·k + k²). "auto" picks the path by a cost model
(:func:`cholesky_cost`, :func:`woodbury_cost`, :data:`ROTATION_COST`) calibrated on
real blocks (benchmarks/bench_kernel.py); it pays at k = 128 (≈ 1.5× on a row sweep of
the 200k × 50k benchmark) and is rarely chosen at k = 64, where the rotation and the
random reads of the rotated rows eat the saving.

*CG* (:func:`cg_block`) is the approximate alternative: a few conjugate-gradient steps
warm-started from the current factors, as in ``implicit``.

Plain NumPy twins of every path live in :mod:`daskwals._reference`.
"""

from __future__ import annotations

import hashlib
import threading

import numba
import numpy as np

from ._dense import (
    cho_solve_upper,
    cholesky_upper,
    compile_with_slp,
    gemm_acc,
    padded_nb,
    syrk_upper,
)

__all__ = [
    "METHODS",
    "ROTATION_COST",
    "TILE",
    "cg_block",
    "cholesky_cost",
    "loss_block",
    "row_counts",
    "solve_block",
    "woodbury_cost",
]

#: Stored entries gathered per SYRK tile, so that the work buffers stay k × TILE
#: however many entries a row has.
TILE = 64

#: Solver paths of :func:`solve_block`. "auto" sends a row to Woodbury when the cost
#: model says it is cheaper (:func:`woodbury_cost` < :func:`cholesky_cost`) and the
#: block's savings pay for rotating the factor rows those rows touch; "woodbury" takes
#: it wherever it applies (for tests); "cholesky" never.
METHODS = {"auto": 0, "cholesky": 1, "woodbury": 2}

# Rows of gathered factor rows rotated into the eigenbasis per micro-kernel call.
_ROTATE_BATCH = 128
# β (eigenvalues of base plus the row's ridge) must exceed this fraction of the
# largest one for the Woodbury path, else the row is solved by Cholesky.
_BETA_FLOOR = 1e-10
# A Woodbury solution is kept when its residual in the original equations is below
# this fraction of the right-hand side (Cholesky reaches ≈ 1e-15·cond).
_RESIDUAL_TOL = 1e-9
# "woodbury" mode keeps rows with more weighted entries than this × k + 64 on Cholesky.
_FORCED_MAX_FACTOR = 4

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_jit = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")


@_jit
def cholesky_cost(t, k):
    """Model cost (≈ FMAs) of a row with ``t`` entries on the Cholesky path."""
    return t * k * k / 2.0 + k * k * k / 6.0 + k * k


@_jit
def woodbury_cost(t_eff, t, k):
    """Model cost of a row with ``t`` entries, ``t_eff`` of them weighted, on the
    Woodbury path (its rotated factor rows not included: see :data:`ROTATION_COST`)."""
    return t_eff * t_eff * k / 2.0 + t_eff * t_eff * t_eff / 6.0 + 6.0 * k * k + 12.0 * t * k


#: Cost of rotating one gathered factor row into the eigenbasis, in units of k².
ROTATION_COST = 2.5


def row_counts(indptr):
    """Stored entries of each row of a stacked CSR block (int64, n_rows)."""
    indptr = np.asarray(indptr)
    return (indptr[:, 1:] - indptr[:, :-1]).sum(axis=0)


# --------------------------------------------------------------------- wrappers
_compile_lock = threading.Lock()


def _call(dispatcher, *args):
    """Call a kernel, compiling it first (SLP vectoriser on) for new argument types."""
    key = tuple(numba.typeof(a) for a in args)
    if key not in dispatcher.overloads:
        with _compile_lock, compile_with_slp():
            dispatcher.compile(key)
    return dispatcher(*args)


def _prepare(indptr, indices, data, ew, r, cg, vg, base):
    k = base.shape[0]
    # float32 factor rows stay float32 (half the memory traffic of the gathers, which
    # are latency-bound); the kernels widen every value to float64 as they read it
    vg_dtype = np.float32 if np.asarray(vg).dtype == np.float32 else np.float64
    vg = np.ascontiguousarray(vg, dtype=vg_dtype)
    if vg.shape[0] == 0:
        vg = np.zeros((0, k), dtype=vg_dtype)
    return (
        np.ascontiguousarray(indptr, dtype=np.int64),
        np.ascontiguousarray(indices, dtype=np.int64),
        np.ascontiguousarray(data, dtype=np.float64),
        np.ascontiguousarray(ew, dtype=np.float64).ravel(),
        np.ascontiguousarray(r, dtype=np.float64).ravel(),
        np.ascontiguousarray(cg, dtype=np.float64).ravel(),
        vg,
        np.ascontiguousarray(base, dtype=np.float64),
    )


_eigh_lock = threading.Lock()
_eigh_cache: dict = {}


def _eigh(base):
    """``base = Q diag(β) Qᵀ`` (β ascending, Q C-contiguous), cached by content.

    Every block of a sweep shares one base, so a worker decomposes it once per sweep,
    not once per block (LAPACK may also run it on several threads).
    """
    key = hashlib.blake2b(base.tobytes(), digest_size=16).digest() + bytes(str(base.shape),
                                                                           "ascii")
    with _eigh_lock:
        hit = _eigh_cache.get(key)
    if hit is None:
        beta, qmat = np.linalg.eigh(base)
        hit = (np.ascontiguousarray(beta), np.ascontiguousarray(qmat))
        with _eigh_lock:
            if len(_eigh_cache) >= 4:
                _eigh_cache.pop(next(iter(_eigh_cache)))
            _eigh_cache[key] = hit
    return hit


def _ridge(ridge, n_rows):
    if ridge is None:
        return np.zeros(0)
    ridge = np.ascontiguousarray(ridge, dtype=np.float64).ravel()
    if ridge.shape != (n_rows,):
        raise ValueError(f"ridge must have one value per row ({n_rows}); got {ridge.shape}")
    return ridge


def _run_in_place(kernel, x_out, args_before, args_after):
    """Run ``kernel`` on ``x_out`` directly when it is C-contiguous float64, else a copy."""
    direct = (
        isinstance(x_out, np.ndarray) and x_out.dtype == np.float64
        and x_out.flags.c_contiguous and x_out.flags.writeable
    )
    x = x_out if direct else np.array(x_out, dtype=np.float64, order="C")
    result = _call(kernel, *args_before, x, *args_after)
    if not direct:
        x_out[...] = x
    return result


def solve_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out,
                ridge=None, method="auto", info=None):
    """Solve every row's normal equations of one block exactly.

    Parameters are described in the module docstring. ``base`` is (k, k) float64 and
    symmetric, ``w0`` the unobserved weight W0. Rows
    with no stored entries are set to their exact minimiser when ``solve_empty`` is
    true (zero, as their right-hand side is zero) and left untouched otherwise.
    ``x_out`` (n_rows, k) receives the solutions. ``ridge`` (n_rows,) adds d_i to row
    i's diagonal. ``method`` is "auto", "cholesky" or "woodbury" (Woodbury wherever it
    applies; for tests): all three give the exact solution. A dict passed as ``info``
    receives ``"woodbury_rows"``, the number of rows the Woodbury path solved.

    Returns
    -------
    failed : int
        -1 on success, else the block-local index of the first row whose system
        was singular (rows after it are not solved).
    count : int
        The stored-entry count of that row (0 on success).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}; got {method!r}")
    prepared = _prepare(indptr, indices, data, ew, r, cg, vg, base)
    k = prepared[-1].shape[0]
    n_rows = prepared[0].shape[1] - 1
    mode = METHODS[method]
    if mode != 1 and k >= 8:
        beta, qmat = _eigh(prepared[-1])
    else:  # k < 8: a k × k Cholesky is as cheap as anything
        mode, beta, qmat = 1, np.zeros(0), np.zeros((0, 0))
    rest = (_ridge(ridge, n_rows), mode, beta, qmat)
    failed, count, n_wood = _run_in_place(
        _solve_rows, x_out, (*prepared, float(w0), bool(solve_empty)), rest
    )
    if info is not None:
        info["woodbury_rows"] = int(n_wood)
    return int(failed), int(count)


def cg_block(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out,
             steps=3, ridge=None):
    """Approximate solves by ``steps`` conjugate-gradient steps from ``x_out`` (in place).

    The same equations as :func:`solve_block`, warm-started from the values in
    ``x_out`` (the current factors), as ``implicit``'s ``use_cg=True``: ≈
    steps·(4·t·k + 2k²) flops per row instead of t·k² + k³/3, and not the exact
    minimiser. A row stops early when its residual vanishes. Rows without stored
    entries are set to zero when ``solve_empty`` (the exact minimiser), else untouched.
    Returns ``(failed, count)`` as :func:`solve_block`; a row fails when a search
    direction has non-positive curvature (the system is not positive definite).
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1; got {steps!r}")
    prepared = _prepare(indptr, indices, data, ew, r, cg, vg, base)
    n_rows = prepared[0].shape[1] - 1
    rest = (steps, _ridge(ridge, n_rows))
    failed, count = _run_in_place(_cg_rows, x_out, (*prepared, float(w0), bool(solve_empty)), rest)
    return int(failed), int(count)


# ---------------------------------------------------------------- exact solves
@_jit
def _solve_rows(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out, ridge,
                mode, beta0, qmat):
    """:func:`solve_block`'s work; ``mode`` is a value of :data:`METHODS` and, unless it
    is 1 (Cholesky), ``base = qmat diag(beta0) qmatᵀ`` with ``beta0`` ascending."""
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    k = vg.shape[1]
    kp = padded_nb(k)
    has_ridge = ridge.shape[0] > 0
    # Cholesky-path buffers; padding stays zero so that padded tiles add nothing
    a = np.zeros((kp, kp))
    b = np.zeros(kp)
    vt = np.zeros((TILE, kp))
    wt = np.zeros((TILE, kp))
    # Woodbury set-up, only when some row takes that path
    slot = np.zeros(0, dtype=np.int64)
    rot = np.zeros((0, 0))
    use_wood = np.zeros(n_rows, dtype=np.bool_)
    t_max = 0
    if mode != 1:
        use_wood, t_max = _woodbury_rows(indptr, indices, ew, r, cg, ridge, beta0, mode,
                                         vg.shape[0])
        if np.any(use_wood):
            slot, rot = _rotate_rows(indptr, indices, vg, qmat, use_wood)
    # t × t buffers sized by the most weighted entries a Woodbury row has
    tp_max = padded_nb(max(t_max, 8)) if np.any(use_wood) else 8
    st = np.zeros((kp, tp_max))
    mm = np.zeros((tp_max, tp_max))
    work = np.zeros(3 * kp + tp_max)
    n_wood = 0
    for row in range(n_rows):
        count = 0
        for j in range(n_pieces):
            count += indptr[j, row + 1] - indptr[j, row]
        if count == 0:
            if solve_empty:
                for col in range(k):
                    x_out[row, col] = 0.0
            continue
        shift = ridge[row] if has_ridge else 0.0
        if use_wood[row]:
            if _woodbury_row(indptr, indices, data, ew, r, cg, slot, rot, qmat, beta0, w0,
                             row, shift, st, mm, work, x_out):
                n_wood += 1
                continue
        if not _cholesky_row(indptr, indices, data, ew, r, cg, vg, base, w0, row, shift,
                             a, b, vt, wt, x_out):
            return row, count, n_wood
    return -1, 0, n_wood


@_jit
def _cholesky_row(indptr, indices, data, ew, r, cg, vg, base, w0, row, shift, a, b, vt, wt,
                  x_out):
    """Row ``row`` by its k × k normal equations; False when they are singular."""
    n_pieces = indptr.shape[0]
    k = vg.shape[1]
    ku = np.uint64(k)  # unsigned indices: no negative-index wraparound, so loops vectorise
    has_ew = ew.shape[0] > 0
    for c1 in range(ku):
        b[c1] = 0.0
        for c2 in range(c1, ku):
            a[c1, c2] = base[c1, c2]
        a[c1, c1] += shift
    rw = r[row]
    t = 0
    for j in range(n_pieces):
        for p in range(indptr[j, row], indptr[j, row + 1]):
            qi = np.uint64(indices[p])
            w = rw * cg[qi]
            if has_ew:
                w *= ew[p]
            coef = (w0 + w) * data[p]
            tu = np.uint64(t)
            for col in range(ku):
                v = vg[qi, col]
                vt[tu, col] = v
                wt[tu, col] = w * v
                b[col] += coef * v
            t += 1
            if t == TILE:
                syrk_upper(a, wt, vt, t, 0, k, 1.0)
                t = 0
    if t > 0:
        syrk_upper(a, wt, vt, t, 0, k, 1.0)
    if not cholesky_upper(a, k):
        return False
    cho_solve_upper(a, k, b)
    for col in range(k):
        x_out[row, col] = b[col]
    return True


@_jit
def _woodbury_rows(indptr, indices, ew, r, cg, ridge, beta0, mode, q):
    """Which rows take the Woodbury path (mode 0: where it pays, 2: wherever it applies),
    and the largest number of weighted entries among them (the t × t buffers' size).

    A row qualifies when all its weights are ≥ 0 (square roots) and β + d_i is safely
    positive. In "auto" mode it must also be cheaper by the cost model, and all of them
    together must save more than rotating the gathered rows they touch costs; "woodbury"
    mode still keeps rows with more than 4k + 64 weighted entries on Cholesky (memory).
    """
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    k = beta0.shape[0]
    has_ew = ew.shape[0] > 0
    has_ridge = ridge.shape[0] > 0
    use = np.zeros(n_rows, dtype=np.bool_)
    savings = 0.0
    t_max = 0
    for row in range(n_rows):
        t = 0
        t_eff = 0
        ok = True
        for j in range(n_pieces):
            for p in range(indptr[j, row], indptr[j, row + 1]):
                w = r[row] * cg[indices[p]]
                if has_ew:
                    w *= ew[p]
                t += 1
                if w > 0.0:
                    t_eff += 1
                elif not w == 0.0:
                    ok = False  # negative or NaN weight: Cholesky decides
        shift = ridge[row] if has_ridge else 0.0
        if t == 0 or not ok or not beta0[0] + shift > _BETA_FLOOR * (beta0[k - 1] + shift):
            continue
        gain = cholesky_cost(t, k) - woodbury_cost(t_eff, t, k)
        if (mode == 2 and t_eff <= _FORCED_MAX_FACTOR * k + 64) or gain > 0.0:
            use[row] = True
            savings += gain
            t_max = max(t_max, t_eff)
    if mode == 0 and np.any(use):
        need = np.zeros(q, dtype=np.bool_)
        n_need = 0
        for row in range(n_rows):
            if use[row]:
                for j in range(n_pieces):
                    for p in range(indptr[j, row], indptr[j, row + 1]):
                        if not need[indices[p]]:
                            need[indices[p]] = True
                            n_need += 1
        if savings <= ROTATION_COST * k * k * n_need:
            use[:] = False
    return use, t_max


@_jit
def _rotate_rows(indptr, indices, vg, qmat, use_wood):
    """ṽ_j = Qᵀ v_j (rows of ``vg @ qmat``) for the gathered rows the Woodbury rows touch.

    Returns ``(slot, rot)``: ṽ_j is ``rot[slot[j]]`` (padded to a multiple of the block;
    ``slot[j]`` is -1 for rows no Woodbury row touches). The rows are rotated
    :data:`_ROTATE_BATCH` at a time by the micro-kernel, which wants them transposed
    (the reduction index first).
    """
    n_pieces = indptr.shape[0]
    q, k = vg.shape
    ku = np.uint64(k)
    kp = padded_nb(k)
    slot = np.full(q, -1, dtype=np.int64)
    for row in range(use_wood.shape[0]):
        if use_wood[row]:
            for j in range(n_pieces):
                for p in range(indptr[j, row], indptr[j, row + 1]):
                    slot[indices[p]] = 0
    which = np.flatnonzero(slot == 0)
    for i in range(which.shape[0]):
        slot[which[i]] = i
    rot = np.empty((padded_nb(which.shape[0]), kp))  # the micro-kernel writes whole blocks
    qpad = np.zeros((kp, kp))
    for i in range(ku):
        for col in range(ku):
            qpad[i, col] = qmat[i, col]
    vt = np.zeros((kp, _ROTATE_BATCH))
    for start in range(0, which.shape[0], _ROTATE_BATCH):
        nb = min(_ROTATE_BATCH, which.shape[0] - start)
        for b in range(np.uint64(nb)):
            qi = np.uint64(which[start + b])
            for c in range(ku):
                vt[c, b] = vg[qi, c]
        out = rot[start : start + padded_nb(nb)]
        for b in range(np.uint64(padded_nb(nb))):
            for c in range(np.uint64(kp)):
                out[b, c] = 0.0
        gemm_acc(out, vt, qpad, k, nb, kp)
    return slot, rot


@_jit
def _woodbury_row(indptr, indices, data, ew, r, cg, slot, rot, qmat, beta0, w0, row, shift,
                  st, mm, work, x_out):
    """Row ``row`` through the t × t push-through system; False asks for Cholesky.

    Names follow the module docstring, in the scaled unknown h = β^½ ⊙ x̃ whose
    equations are (I + SᵀS) h = ζ: ``st`` holds Sᵀ (k × t, padded), ``mm`` the t × t
    matrix I + S Sᵀ (upper triangle), ``zeta`` ζ, ``h`` ζ − Sᵀs and ``g`` first S ζ,
    then s, then S h. The factor rows are read once, into ``st``; the residual check
    works on ``st`` too.
    """
    n_pieces = indptr.shape[0]
    k = qmat.shape[0]
    ku = np.uint64(k)  # unsigned indices: no negative-index wraparound, so loops vectorise
    kp = st.shape[0]
    has_ew = ew.shape[0] > 0
    bis = work[:kp]  # β^-½
    zeta = work[kp : 2 * kp]
    h = work[2 * kp : 3 * kp]
    g = work[3 * kp :]
    for col in range(ku):
        bis[col] = 1.0 / np.sqrt(beta0[col] + shift)
        zeta[col] = 0.0
    rw = r[row]
    t = 0
    for j in range(n_pieces):
        for p in range(indptr[j, row], indptr[j, row + 1]):
            w = rw * cg[indices[p]]
            if has_ew:
                w *= ew[p]
            coef = (w0 + w) * data[p]
            si = np.uint64(slot[indices[p]])
            for col in range(ku):
                zeta[col] += coef * rot[si, col]
            if w > 0.0:
                sw = np.sqrt(w)
                tu = np.uint64(t)
                for col in range(ku):
                    st[col, tu] = sw * rot[si, col] * bis[col]
                t += 1
    for col in range(ku):
        zeta[col] *= bis[col]
        h[col] = zeta[col]
    tu = np.uint64(t)
    if t > 0:
        tp = np.uint64(padded_nb(t))
        for col in range(ku):
            for i in range(tu, tp):
                st[col, i] = 0.0
        for i in range(tp):
            for i2 in range(i, tp):
                mm[i, i2] = 0.0
        syrk_upper(mm, st, st, k, 0, t, 1.0)
        for i in range(tu):
            mm[i, i] += 1.0
            g[i] = 0.0
        for col in range(ku):
            z = zeta[col]
            for i in range(tu):
                g[i] += z * st[col, i]
        if not cholesky_upper(mm, t):
            return False
        cho_solve_upper(mm, t, g)
        for col in range(ku):
            s = 0.0
            for i in range(tu):
                s += st[col, i] * g[i]
            h[col] -= s
        # residual check in the original equations of the row (eigenbasis):
        # Ṽᵀc − (diag(β) + ṼᵀDṼ) x̃ = β^½ ⊙ (ζ − h − Sᵀ S h)
        for i in range(tu):
            g[i] = 0.0
        for col in range(ku):
            z = h[col]
            for i in range(tu):
                g[i] += z * st[col, i]
        res_sq = 0.0
        rhs_sq = 0.0
        for col in range(ku):
            s = 0.0
            for i in range(tu):
                s += st[col, i] * g[i]
            b = beta0[col] + shift
            res = zeta[col] - h[col] - s
            res_sq += b * res * res
            rhs_sq += b * zeta[col] * zeta[col]
        if not res_sq <= (_RESIDUAL_TOL * _RESIDUAL_TOL) * rhs_sq:
            return False
    # back from the scaled eigenbasis: u_i = Q (β^-½ ⊙ h)
    for col in range(ku):
        h[col] *= bis[col]
    for i in range(ku):
        s = 0.0
        for col in range(ku):
            s += qmat[i, col] * h[col]
        x_out[row, i] = s
    return True


# --------------------------------------------------------------------------- CG
@_jit
def _cg_rows(indptr, indices, data, ew, r, cg, vg, base, w0, solve_empty, x_out, steps,
             ridge):
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    k = vg.shape[1]
    ku = np.uint64(k)  # unsigned indices: no negative-index wraparound, so loops vectorise
    has_ew = ew.shape[0] > 0
    has_ridge = ridge.shape[0] > 0
    x = np.empty(k)
    res = np.empty(k)
    d = np.empty(k)
    ad = np.empty(k)
    # the row's factor rows, weights and right-hand coefficients, gathered once: the
    # 1 + steps passes over them then read contiguous memory, not random rows of vg
    cap = 256
    rows = np.empty((cap, k))
    wts = np.empty(cap)
    coefs = np.empty(cap)
    for row in range(n_rows):
        count = 0
        for j in range(n_pieces):
            count += indptr[j, row + 1] - indptr[j, row]
        if count == 0:
            if solve_empty:
                for col in range(ku):
                    x_out[row, col] = 0.0
            continue
        if count > cap:
            cap = 2 * count
            rows = np.empty((cap, k))
            wts = np.empty(cap)
            coefs = np.empty(cap)
        rw = r[row]
        t = 0
        for j in range(n_pieces):
            for p in range(indptr[j, row], indptr[j, row + 1]):
                qi = np.uint64(indices[p])
                w = rw * cg[qi]
                if has_ew:
                    w *= ew[p]
                tu = np.uint64(t)
                wts[tu] = w
                coefs[tu] = (w0 + w) * data[p]
                for col in range(ku):
                    rows[tu, col] = vg[qi, col]
                t += 1
        tu = np.uint64(t)
        shift = ridge[row] if has_ridge else 0.0
        for col in range(ku):
            x[col] = x_out[row, col]
        # res = b − A x: −(base + shift·I) x, then each entry's part of b − (Σ w v vᵀ) x
        _apply_base(base, shift, x, res, k)
        for col in range(ku):
            res[col] = -res[col]
        for i in range(tu):
            pred = 0.0
            for col in range(ku):
                pred += rows[i, col] * x[col]
            f = coefs[i] - wts[i] * pred
            for col in range(ku):
                res[col] += f * rows[i, col]
        rr = 0.0
        for col in range(ku):
            d[col] = res[col]
            rr += res[col] * res[col]
        for _ in range(steps):
            if not rr > 0.0:
                break
            _apply_base(base, shift, d, ad, k)
            for i in range(tu):
                proj = 0.0
                for col in range(ku):
                    proj += rows[i, col] * d[col]
                f = wts[i] * proj
                for col in range(ku):
                    ad[col] += f * rows[i, col]
            dad = 0.0
            for col in range(ku):
                dad += d[col] * ad[col]
            if not dad > 0.0:
                return row, count
            alpha = rr / dad
            rr_new = 0.0
            for col in range(ku):
                x[col] += alpha * d[col]
                res[col] -= alpha * ad[col]
                rr_new += res[col] * res[col]
            beta = rr_new / rr
            for col in range(ku):
                d[col] = res[col] + beta * d[col]
            rr = rr_new
        for col in range(ku):
            x_out[row, col] = x[col]
    return -1, 0


@_jit
def _apply_base(base, shift, x, out, k):
    """out = (base + shift·I) x, ``base`` symmetric with its upper triangle read."""
    ku = np.uint64(k)
    for i in range(ku):
        out[i] = shift * x[i]
    for i in range(ku):
        xi = x[i]
        s = base[i, i] * xi
        for col in range(i + np.uint64(1), ku):
            s += base[i, col] * x[col]
            out[col] += base[i, col] * xi
        out[i] += s


# ------------------------------------------------------------------------- loss
@_jit
def loss_block(indptr, indices, data, ew, r, cg, x, vg):
    """Sparse loss sums of one block, evaluated at factors ``x`` (rows) and ``vg``.

    Returns a float64 array ``[Σ (A-p)², Σ p², Σ w (A-p)², Σ w]`` over the block's
    stored entries, with p_ij = x_i · v_j and w_ij = R_i C_j e_ij. The full sparse
    term of the objective is ``W0 (s0 - s1) + s2``.
    """
    n_pieces = indptr.shape[0]
    n_rows = indptr.shape[1] - 1
    ku = np.uint64(vg.shape[1])  # unsigned: no wraparound, so the dot product vectorises
    has_ew = ew.shape[0] > 0
    s0 = s1 = s2 = s3 = 0.0
    for row in range(n_rows):
        rw = r[row]
        ru = np.uint64(row)
        for j in range(n_pieces):
            for p in range(indptr[j, row], indptr[j, row + 1]):
                q = np.uint64(indices[p])
                pred = 0.0
                for c in range(ku):
                    pred += x[ru, c] * vg[q, c]
                w = rw * cg[q]
                if has_ew:
                    w *= ew[p]
                err = data[p] - pred
                s0 += err * err
                s1 += pred * pred
                s2 += w * err * err
                s3 += w
    out = np.empty(4)
    out[0] = s0
    out[1] = s1
    out[2] = s2
    out[3] = s3
    return out

