"""daskwals: weighted alternating least squares (WALS) matrix factorisation on dask.

The successor of TensorFlow 1.x ``tf.contrib.factorization.WALSModel``: the same model,
with ratings held as chunked ``sparse``-backed dask arrays and factors in zarr stores,
running on the threaded scheduler or a dask.distributed cluster.
"""

from __future__ import annotations

from . import metrics, splits
from ._blockops import SingularSystemError
from .estimator import WALS
from .estimator import open_model as open  # noqa: A001
from .ratings import Ratings, as_ratings
from .ratings_store import ingest, open_ratings, write_synthetic
from .store import FactorStore
from .walsmodel import WALSModel

__version__ = "0.1.0"

__all__ = [
    "FactorStore", "Ratings", "SingularSystemError", "WALS", "WALSModel", "__version__",
    "as_ratings", "ingest", "metrics", "open", "open_ratings", "splits", "write_synthetic",
]
