"""Parameter checks shared by the front ends; each error names the parameter and value."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(name, value, minimum=1):
    """``value`` as an int ≥ ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}; got {value!r}")
    return int(value)


def nonneg(name, value):
    """``value`` as a finite float ≥ 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {value!r}")
    return float(value)


def dtype_name(dtype, allow_none=False):
    """'float32' or 'float64' (or None when allowed)."""
    if dtype is None and allow_none:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        extra = " (or None for the store's)" if allow_none else ""
        raise ValueError(f"dtype must be 'float32' or 'float64'{extra}; got {dtype!r}")
    return dt.name


def short(value):
    """A short description of a parameter value for error messages."""
    if value is None or isinstance(value, numbers.Number):
        return repr(value)
    return f"<{type(value).__name__} of shape {np.shape(value)}>"


def weight_vector(name, value, length, what="row"):
    """A non-negative finite float64 vector of ``length`` from a scalar or a sequence."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        vec = np.full(length, float(value))
    else:
        if hasattr(value, "compute"):
            value = value.compute()
        vec = np.asarray(value, dtype=np.float64).ravel()
        if vec.shape != (length,):
            raise ValueError(
                f"{name} must be a scalar or have one value per {what} ({length}); got "
                f"shape {np.shape(value)}"
            )
    return check_nonneg_vector(name, vec)


def check_nonneg_vector(name, vec):
    """``vec`` unchanged if every value is finite and ≥ 0; else a ValueError naming the first."""
    bad = np.flatnonzero(~np.isfinite(vec) | (vec < 0))
    if bad.size:
        raise ValueError(
            f"{name} must be finite and ≥ 0; {bad.size} values are not, the first is "
            f"{vec[bad[0]]} at position {bad[0]}"
        )
    return vec
