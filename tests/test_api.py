"""The public surface: sorted exports, documented names, and lazy graph building."""

from __future__ import annotations

import inspect

import dask
import numpy as np

import daskwals
from daskwals import _graph

from .conftest import random_ratings


def test_all_is_sorted_and_importable():
    assert list(daskwals.__all__) == sorted(daskwals.__all__)
    for name in daskwals.__all__:
        assert hasattr(daskwals, name), name


def test_public_callables_have_docstrings():
    for name in daskwals.__all__:
        obj = getattr(daskwals, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
    for name, member in inspect.getmembers(daskwals.WALS, inspect.isfunction):
        if not name.startswith("_"):
            assert member.__doc__, f"WALS.{name}"


def test_building_a_sweep_computes_and_writes_nothing():
    X = random_ratings(40, 30, 0.2, seed=1)
    model = daskwals.WALS(3, n_iter=1, seed=0, chunks=(10, 10)).fit(X)
    store = model.store_
    before = np.asarray(store.factor("row")).copy()
    calls = []
    with dask.callbacks.Callback(pretask=lambda key, dsk, state: calls.append(key)):
        for cache in (True, False):
            _graph.build_sweep(store, model.ratings_, "row", unobserved_weight=0.1,
                               regularization=0.1, fixed_gram=store.gramian("col"),
                               cache_factors=cache)
        _graph.build_projection(store, daskwals.as_ratings(X[:5], chunks=(5, 10)), "row",
                                weights=np.ones(5), unobserved_weight=0.1, regularization=0.1)
        model.recommend_all(N=3)
    assert calls == []
    assert store.meta["sweeps"] == 2
    np.testing.assert_array_equal(np.asarray(store.factor("row")), before)
