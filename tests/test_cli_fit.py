"""`daskwals ingest`, `generate` and `fit` end to end, in subprocesses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import daskwals


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "daskwals.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_ingest_then_fit_with_streaming_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"user-{i}" for i in rng.integers(0, 300, 4000)]
    items = [f"item-{i}" for i in rng.integers(0, 120, 4000)]
    pairs = dict(zip(zip(users, items), rng.integers(1, 6, 4000)))
    csv = tmp_path / "ratings.csv"
    csv.write_text("user,item,rating\n" + "".join(
        f"{u},{i},{r}\n" for (u, i), r in pairs.items()))
    store = tmp_path / "ratings.zarr"
    out = run("ingest", str(csv), str(store), "--chunks", "100", "50", "--threads")
    assert out.returncode == 0, out.stderr
    assert f"{len(pairs):,} stored entries" in out.stdout

    model = tmp_path / "model.zarr"
    out = run("fit", str(store), str(model), "--rank", "4", "--iterations", "2", "--no-cache",
              "--workers", "1", "--dtype", "float64")
    assert out.returncode == 0, out.stderr
    assert "iteration   2: loss" in out.stdout
    png = tmp_path / "model-loss.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    served = daskwals.open(model)
    assert served.n_iter_ == 2 and len(served.loss_history_) == 2
    assert set(served.col_ids_) == set(items)

    out = run("fit", str(store), str(model), "--rank", "4", "--iterations", "3", "--resume",
              "--threads", "--dtype", "float64")
    assert out.returncode == 0, out.stderr
    resumed = daskwals.open(model)
    assert resumed.n_iter_ == 3 and resumed.loss_history_[:2] == served.loss_history_
    whole = daskwals.WALS(4, n_iter=3, seed=0, dtype="float64", unobserved_weight=0.1,
                          regularization=0.1, row_weights=1.0, col_weights=1.0).fit(
        daskwals.open_ratings(store))
    np.testing.assert_allclose(np.asarray(resumed.col_factors_), np.asarray(whole.col_factors_),
                               rtol=1e-10)

    out = run("fit", str(store), str(model), "--rank", "5", "--resume", "--threads")
    assert out.returncode == 1 and "cannot resume" in out.stderr


def test_generate_and_refusals(tmp_path):
    store = tmp_path / "synth.zarr"
    out = run("generate", str(store), "--users", "500", "--items", "80", "--nnz", "4000")
    assert out.returncode == 0, out.stderr
    assert daskwals.open_ratings(store).shape == (500, 80)
    out = run("generate", str(store), "--users", "500", "--items", "80", "--nnz", "4000")
    assert out.returncode == 1 and "overwrite" in out.stderr.lower()
    out = run("fit", str(tmp_path / "missing.zarr"), str(tmp_path / "m.zarr"), "--threads")
    assert out.returncode == 1 and "error" in out.stderr
    with pytest.raises(FileNotFoundError):
        daskwals.open(tmp_path / "m.zarr")
