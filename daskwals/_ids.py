"""Maps between original row/column ids (any sortable values) and positions 0..n-1."""

from __future__ import annotations

import numpy as np


class IdMap:
    """Position ``i`` holds the original id of index ``i``; lookups are vectorised."""

    def __init__(self, ids, what="row"):
        ids = np.asarray(ids)
        if ids.dtype.kind in "US":
            ids = ids.astype(object)
        self.ids = ids
        self.what = what
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self):
        return len(self.ids)

    def index(self, values):
        """Positions of the original ids ``values``; unknown ids raise KeyError."""
        values = np.atleast_1d(np.asarray(values, dtype=self.ids.dtype))
        pos = np.searchsorted(self._sorted, values)
        pos = np.clip(pos, 0, max(len(self) - 1, 0))
        found = len(self) > 0
        ok = self._sorted[pos] == values if found else np.zeros(values.shape, bool)
        if not np.all(ok):
            missing = values[~ok]
            first = missing[0].item() if hasattr(missing[0], "item") else missing[0]
            raise KeyError(
                f"{missing.size} {self.what} ids are not in the model; the first is "
                f"{first!r}. Check the ids, or fold new {self.what}s in with "
                "WALS.transform first."
            )
        return self._order[pos].astype(np.int64)

    def lookup(self, positions):
        """Original ids of ``positions`` (-1 positions give None / -1)."""
        positions = np.asarray(positions)
        out = self.ids[np.clip(positions, 0, None)]
        if np.any(positions < 0):
            out = out.astype(object) if out.dtype.kind not in "iuf" else out
            out[positions < 0] = None if out.dtype == object else -1
        return out
