"""Per-partition work of :func:`daskwals.ingest`: validate, scan ids, spill, gather.

Plain pandas and NumPy, no dask: :mod:`daskwals.ratings_store` wires these functions
into the passes. Pass 1 (:func:`scan_partition`) validates a partition and returns its
unique ids; pass 2 (:func:`spill_partition`) maps ids to indices, sorts the partition by
block and appends it to raw binary spill files; the write pass (:func:`gather_block`)
reads one block's pieces back from every partition's spill files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Problems found in a partition, in the order they are reported.
PROBLEMS = (
    "missing_user", "missing_item", "nonnumeric_rating", "nonfinite_rating",
    "nonnumeric_weight", "nonfinite_weight", "negative_weight", "bad_timestamp",
)


@dataclass(frozen=True)
class Columns:
    """The input's column names and how the optional columns are stored."""

    user: str
    item: str
    rating: str
    weight: str | None = None
    timestamp: str | None = None
    timestamp_kind: str | None = None  # "datetime" (int64 ns, UTC), "int" or "float"

    @property
    def names(self):
        return [c for c in (self.user, self.item, self.rating, self.weight, self.timestamp)
                if c is not None]


def timestamp_kind(dtype):
    """How a timestamp column of ``dtype`` is stored: 'int', 'float' or 'datetime'."""
    if pd.api.types.is_bool_dtype(dtype):
        return "int"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "datetime"  # datetime64 or strings, parsed as ISO 8601


def _numeric(series):
    """``series`` as float64 and a mask of entries that were present but not numbers."""
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(values.size, dtype=bool)
    coerced = pd.to_numeric(series, errors="coerce")
    values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, np.isnan(values) & series.notna().to_numpy()


def _timestamps(series, kind):
    if kind == "int":
        return series.to_numpy(dtype=np.int64, na_value=0), series.isna().to_numpy()
    if kind == "float":
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, ~np.isfinite(values)
    parsed = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna().to_numpy()
    values = np.zeros(len(series), dtype=np.int64)
    if not bad.all():
        values[~bad] = parsed[~bad].dt.as_unit("ns").astype("int64").to_numpy()
    return values, bad


def clean_partition(df, cols):
    """Validate one partition; returns ``(fields, problems)``.

    ``fields`` holds the id columns (as given) and float64 ``value`` (plus ``weight`` and
    ``timestamp`` when configured). ``problems`` maps each kind in :data:`PROBLEMS` to
    ``[count, example]`` where ``example`` describes the first offending row.
    """
    users, items = df[cols.user], df[cols.item]
    checks = {"missing_user": users.isna().to_numpy(), "missing_item": items.isna().to_numpy()}
    shown = {"missing_user": users, "missing_item": items}
    value, checks["nonnumeric_rating"] = _numeric(df[cols.rating])
    checks["nonfinite_rating"] = ~np.isfinite(value) & ~checks["nonnumeric_rating"]
    shown["nonnumeric_rating"] = shown["nonfinite_rating"] = df[cols.rating]
    fields = {"user": users, "item": items, "value": value}
    if cols.weight is not None:
        weight, checks["nonnumeric_weight"] = _numeric(df[cols.weight])
        checks["nonfinite_weight"] = ~np.isfinite(weight) & ~checks["nonnumeric_weight"]
        with np.errstate(invalid="ignore"):
            checks["negative_weight"] = weight < 0
        for kind in ("nonnumeric_weight", "nonfinite_weight", "negative_weight"):
            shown[kind] = df[cols.weight]
        fields["weight"] = weight
    if cols.timestamp is not None:
        fields["timestamp"], checks["bad_timestamp"] = _timestamps(
            df[cols.timestamp], cols.timestamp_kind
        )
        shown["bad_timestamp"] = df[cols.timestamp]
    problems = {}
    for kind, mask in checks.items():
        count = int(np.count_nonzero(mask))
        if count:
            p = int(np.flatnonzero(mask)[0])
            problems[kind] = [count, (
                f"{shown[kind].iloc[p]!r} (user {users.iloc[p]!r}, item {items.iloc[p]!r})"
            )]
    return fields, problems


_PROBLEM_TEXT = {
    "missing_user": ("{user}", "missing ids", "drop those rows"),
    "missing_item": ("{item}", "missing ids", "drop those rows"),
    "nonnumeric_rating": ("{rating}", "values that are not numbers",
                          "fix them, or coerce with pd.to_numeric(..., errors='coerce') and "
                          "drop the NaNs"),
    "nonfinite_rating": ("{rating}", "NaN or infinite values",
                         "drop or impute them (e.g. df.dropna(subset=[{rating!r}]))"),
    "nonnumeric_weight": ("{weight}", "values that are not numbers", "fix them"),
    "nonfinite_weight": ("{weight}", "NaN or infinite values", "drop or impute them"),
    "negative_weight": ("{weight}", "negative values", "weights must be ≥ 0"),
    "bad_timestamp": ("{timestamp}", "missing or unparseable timestamps",
                      "use numbers, datetimes or ISO 8601 strings"),
}


def describe_problems(reports, cols):
    """One message for all problems found in pass 1, or None."""
    totals = {}
    for report in reports:
        for kind, (count, example) in report["problems"].items():
            if kind in totals:
                totals[kind][0] += count
            else:
                totals[kind] = [count, example]
    names = {"user": cols.user, "item": cols.item, "rating": cols.rating,
             "weight": cols.weight, "timestamp": cols.timestamp}
    lines = []
    for kind in PROBLEMS:
        if kind in totals:
            column, what, fix = (s.format(**names) for s in _PROBLEM_TEXT[kind])
            count, example = totals[kind]
            lines.append(f"column {column!r} has {count} {what}; the first is {example}. "
                         f"Fix: {fix}.")
    if not lines:
        return None
    return "invalid ratings input, nothing was written:\n  " + "\n  ".join(lines)


def _mixed_ids(column, detail):
    return ValueError(
        f"the ids in column {column!r} {detail}, so they cannot be sorted into one "
        f"deterministic index; cast the column to one type, e.g. "
        f"df[{column!r}] = df[{column!r}].astype(str)"
    )


def unique_ids(series, column):
    """Sorted unique non-missing ids of a partition.

    Numbers come back as a NumPy array, strings as an Arrow ``large_string`` array:
    a million string ids then take tens of MB instead of the hundreds that Python
    ``str`` objects would, and Arrow hashes and sorts them much faster.
    """
    values = series.dropna()
    if pd.api.types.is_numeric_dtype(values.dtype):
        return np.unique(values.to_numpy())
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise _mixed_ids(column, "mix types") from None
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return np.unique(arr.to_numpy())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise _mixed_ids(column, f"have Arrow type {arr.type} (not strings or numbers)")
    return merge_unique(column, pc.unique(arr.cast(pa.large_string())))


def merge_unique(column, *arrays):
    """The sorted union of sorted unique id arrays (one tree-reduction step)."""
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return np.empty(0, dtype=np.int64)
    strings = [isinstance(a, pa.Array) for a in arrays]
    if all(strings):
        merged = pc.unique(pa.concat_arrays(arrays)) if len(arrays) > 1 else arrays[0]
        return merged.take(pc.array_sort_indices(merged))
    if any(strings):
        raise _mixed_ids(column, "mix strings and numbers across partitions")
    return np.unique(np.concatenate(arrays))


def id_at(ids, k):
    """The id at index ``k`` as a Python object."""
    value = ids[int(k)]
    return value.as_py() if isinstance(value, pa.Scalar) else value.item()


def lookup(values, ids):
    """Index of each of ``values`` (a Series) in the sorted ``ids``; -1 when absent."""
    if isinstance(ids, pa.Array):
        arr = pa.array(values, from_pandas=True).cast(pa.large_string())
        return pc.index_in(arr, value_set=ids).fill_null(-1).to_numpy().astype(np.int64)
    values = values.to_numpy()
    pos = np.searchsorted(ids, values)
    np.minimum(pos, ids.size - 1, out=pos)
    return np.where(ids[pos] == values, pos, -1).astype(np.int64)


def scan_partition(df, cols):
    """Pass 1: ``(unique users, unique items, report)`` of one partition."""
    _, problems = clean_partition(df, cols)
    report = {"rows": len(df), "problems": problems}
    return unique_ids(df[cols.user], cols.user), unique_ids(df[cols.item], cols.item), report


def spill_partition(df, part, cols, user_ids, item_ids, chunks, n_col_blocks, fields,
                    directory):
    """Pass 2: write one partition's entries, sorted by block, to raw spill files.

    Returns ``(part, blocks, starts, n)``: the flat ids (i·n_col_blocks + j) of the blocks
    present, where each starts in the partition's spill files, and the entry count.
    """
    data, problems = clean_partition(df, cols)
    if problems:
        raise RuntimeError(
            f"partition {part} has invalid entries that the first pass did not see "
            f"({sorted(problems)}); did the input change during ingest?"
        )
    r = lookup(data["user"], user_ids)
    c = lookup(data["item"], item_ids)
    if (r < 0).any() or (c < 0).any():
        raise RuntimeError(
            f"partition {part} has ids that the first pass did not see; did the input "
            "change during ingest?"
        )
    rc, cc = chunks
    block = (r // rc) * n_col_blocks + (c // cc)
    order = np.argsort(block, kind="stable")
    block = block[order]
    out = {"row": (r % rc)[order], "col": (c % cc)[order], "value": data["value"][order]}
    for name in ("weight", "timestamp"):
        if name in fields:
            out[name] = data[name][order]
    for name, values in out.items():
        np.ascontiguousarray(values, dtype=fields[name]).tofile(
            directory / f"p{part:06d}.{name}"
        )
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if block.size else block
    return part, block[starts], starts, int(block.size)


def gather_block(directory, pieces, fields):
    """Read one block's pieces, rows of (part, start, stop), back from the spill files."""
    out = {}
    for name, dtype in fields.items():
        dtype = np.dtype(dtype)
        chunks = [
            np.fromfile(directory / f"p{part:06d}.{name}", dtype=dtype, count=stop - start,
                        offset=start * dtype.itemsize)
            for part, start, stop in pieces.tolist()
        ]
        out[name] = np.concatenate(chunks) if chunks else np.empty(0, dtype)
    return out


def sort_block(entries, sum_duplicates):
    """Sort a block row-major and handle repeated (row, col) pairs.

    Returns ``(entries, n_duplicates, first)`` where ``first`` is the position (in the
    sorted entries) of the first repeated pair, or None. With ``sum_duplicates`` the
    repeats are merged: values and weights summed, the latest timestamp kept.
    """
    order = np.lexsort((entries["col"], entries["row"]))
    entries = {name: values[order] for name, values in entries.items()}
    row, col = entries["row"], entries["col"]
    repeat = (row[1:] == row[:-1]) & (col[1:] == col[:-1])
    n_dup = int(np.count_nonzero(repeat))
    if n_dup == 0:
        return entries, 0, None
    first = int(np.flatnonzero(repeat)[0])
    if not sum_duplicates:
        return entries, n_dup, first
    starts = np.flatnonzero(np.r_[True, ~repeat])
    merged = {"row": row[starts], "col": col[starts]}
    for name in ("value", "weight"):
        if name in entries:
            merged[name] = np.add.reduceat(entries[name], starts)
    if "timestamp" in entries:
        merged["timestamp"] = np.maximum.reduceat(entries["timestamp"], starts)
    return merged, n_dup, first
