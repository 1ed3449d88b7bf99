"""Accuracy on real data (MovieLens latest-small, HetRec Last.fm 2K), against baselines.

Slow: run with ``pytest -m slow tests/test_real_data.py``. The data are not in the
repository; the tests skip unless $DASKWALS_DATA or ../shared/data (beside the
repository) holds them. The runs are those of benchmarks/evaluate_real_data.py with its
default settings; the margins below leave room around the figures measured there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import dask
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _data_dir():
    for candidate in (os.environ.get("DASKWALS_DATA"), Path(__file__).resolve().parents[2]
                      / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


DATA = _data_dir()


def _script():
    spec = importlib.util.spec_from_file_location(
        "evaluate_real_data", REPO / "benchmarks" / "evaluate_real_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need(folder):
    if DATA is None or not (DATA / folder).is_dir():
        pytest.skip(f"{folder} not found: set DASKWALS_DATA to the shared data folder")


@pytest.fixture(scope="module")
def bench():
    return _script()


@pytest.fixture(scope="module")
def movielens(bench):
    _need("ml-latest-small")
    with dask.config.set(scheduler="threads"):
        rows = bench.movielens(DATA)
    return {row["model"]: row for row in rows}


@pytest.fixture(scope="module")
def lastfm(bench):
    _need("hetrec2011-lastfm-2k")
    with dask.config.set(scheduler="threads"):
        rows = bench.lastfm(DATA)
    return {row["model"]: row for row in rows}


def test_movielens_bias_plus_wals_beats_the_baselines(movielens):
    mean, bias = movielens["global mean"]["rmse"], movielens["bias baseline"]["rmse"]
    assert bias < mean - 0.1
    for name in ("bias + WALS weighted", "bias + WALS ALS mode"):
        assert movielens[name]["rmse"] < bias - 0.004, name


def test_movielens_raw_ratings_need_the_weighted_mode(movielens):
    """ALS mode regresses every unobserved entry to 0: useless for star ratings."""
    weighted = movielens["WALS weighted, raw ratings"]
    als = movielens["WALS ALS mode, raw ratings"]
    assert als["rmse"] > 2.0 and weighted["rmse"] < als["rmse"] - 1.0
    # the library's RMSE is the NumPy one
    for row in (weighted, als):
        assert row["rmse_daskwals_metrics"] == pytest.approx(row["rmse"], rel=1e-6)


def test_lastfm_wals_beats_popularity(lastfm):
    wals, popular = lastfm["WALS binary"], lastfm["popularity"]
    for metric in ("precision", "map", "ndcg"):
        assert wals[metric] > 2 * popular[metric], metric


def test_lastfm_wals_matches_implicit_on_the_same_objective(lastfm):
    if "implicit ALS binary" not in lastfm:
        pytest.skip("implicit is not installed")
    wals, implicit = lastfm["WALS binary"], lastfm["implicit ALS binary"]
    for metric in ("precision", "map", "ndcg"):
        assert wals[metric] == pytest.approx(implicit[metric], rel=0.15), metric
