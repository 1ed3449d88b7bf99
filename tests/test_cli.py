"""The command line, run as users run it: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daskwals.synthetic import leave_one_out, planted_implicit


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "daskwals.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "info" in out.stdout


def test_demo_end_to_end(tmp_path):
    store = tmp_path / "demo.zarr"
    out = run("demo", "--users", "800", "--items", "300", "--iterations", "3", "--rank", "8",
              "--workers", "1", "--eval-users", "200", "--store", str(store))
    assert out.returncode == 0, out.stderr
    assert "iteration   3: loss" in out.stdout
    assert "held-out hit rate @10" in out.stdout and "popularity" in out.stdout
    assert f"model store: {store}" in out.stdout
    assert "dashboard:" in out.stdout
    info = run("info", str(store))
    assert info.returncode == 0, info.stderr
    assert "800 rows × 300 columns, rank 8" in info.stdout
    assert "sweeps:       6 (3 iterations)" in info.stdout


def test_info_on_missing_store_is_a_clear_error(tmp_path):
    out = run("info", str(tmp_path / "nope.zarr"))
    assert out.returncode == 1
    assert "no daskwals model store" in out.stderr


def test_planted_generator_and_split():
    data = planted_implicit(300, 100, rank=4, mean_per_user=10, seed=3)
    again = planted_implicit(300, 100, rank=4, mean_per_user=10, seed=3)
    assert (data.matrix != again.matrix).nnz == 0
    assert data.matrix.shape == (300, 100) and data.matrix.nnz > 1000
    train, rows, cols = leave_one_out(data.matrix, seed=0)
    assert train.nnz == data.matrix.nnz - rows.size
    assert all(data.matrix[r, c] == 1 and train[r, c] == 0 for r, c in zip(rows, cols))
    with pytest.raises(IndexError):
        data.matrix[300, 0]
