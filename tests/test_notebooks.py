"""The notebooks run end to end under papermill, at small parameters, in this environment.

Each notebook shows its numbers in a cell tagged ``results`` (an ``application/json``
output); the tests read them from the executed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

papermill = pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["quickstart", "out_of_core", "tf_migration"]


def _runs_this_python(spec):
    """Whether a kernelspec starts the interpreter running these tests."""
    exe = spec.argv[0]
    # jupyter_client swaps a bare "python" (or "python3", "python3.X") for sys.executable
    if exe in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}:
        return True
    found = shutil.which(exe)
    return found is not None and os.path.realpath(found) == os.path.realpath(sys.executable)


@pytest.fixture(scope="session")
def python3_kernel(tmp_path_factory):
    """A "python3" kernelspec running this interpreter, a writable HOME, and Agg plots."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")
        if not os.access(os.path.expanduser("~"), os.W_OK):
            # jupyter writes the kernels' connection files under HOME
            mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        manager = kernelspec.KernelSpecManager()
        specs = manager.find_kernel_specs()
        if "python3" not in specs or not _runs_this_python(manager.get_kernel_spec("python3")):
            # a private kernelspec, first on JUPYTER_PATH, leaving the user's own alone
            prefix = tmp_path_factory.mktemp("kernel-prefix")
            subprocess.run(
                [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                 "--name", "python3"],
                check=True, capture_output=True,
            )
            jupyter_path = str(prefix / "share" / "jupyter")
            mp.setenv("JUPYTER_PATH", os.pathsep.join(
                p for p in (jupyter_path, os.environ.get("JUPYTER_PATH")) if p))
            assert _runs_this_python(kernelspec.KernelSpecManager().get_kernel_spec("python3"))
        yield "python3"


def execute(name, tmp_path, kernel, **parameters):
    """Run notebook ``name`` with papermill into ``tmp_path``; the executed notebook."""
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters, kernel_name=kernel,
        cwd=str(tmp_path), progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def recorded(nb):
    """The JSON shown by the cell tagged "results"."""
    for cell in nb.cells:
        if "results" in cell.metadata.get("tags", []):
            for output in cell.outputs:
                if "application/json" in output.get("data", {}):
                    return output["data"]["application/json"]
    raise AssertionError("the notebook recorded no results")


def n_figures(nb):
    return sum("image/png" in output.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)


def check_loss(losses, n_iter):
    assert len(losses) == n_iter
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # every sweep solves its factor exactly: the objective never rises
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))


# ----------------------------------------------------------------- saved form
@pytest.mark.parametrize("name", NAMES)
def test_saved_without_outputs_and_parameterised(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    raw = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert all(not cell.get("outputs") for cell in raw["cells"])
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert nb.metadata.kernelspec.name == "python3"


# ----------------------------------------------------------------- executions
def test_quickstart_generated_data(tmp_path, python3_kernel):
    # starts its own LocalCluster (scheduler=None); one worker is enough at this size
    nb = execute("quickstart", tmp_path, python3_kernel, n_workers=1, n_users=400, n_items=200,
                 rank=8, iterations=4, show_users=2)
    results = recorded(nb)
    check_loss(results["loss_history"], 4)
    assert results["shape"] == [400, 200]
    assert results["auc"] > 0.7  # a planted low-rank structure; chance is 0.5
    assert 0 < results["ndcg@10"] <= 1 and 0 < results["recall@10"] <= 1
    recs = results["recommendations"]
    assert set(recs) == {"user000000", "user000001"}
    assert all(len(items) == 5 and all(i.startswith("item") for i in items)
               for items in recs.values())
    assert results["dashboard"].startswith("http")
    assert n_figures(nb) == 2  # the loss curve and the ranking metrics


def test_quickstart_csv_on_a_running_cluster(tmp_path, python3_kernel, local_cluster):
    # MovieLens' layout (userId,movieId,rating,timestamp), with integer ids that are not
    # positions, and an item names file like movies.csv
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(1, 121) * 7, 12)
    items = np.concatenate([rng.choice(60, 12, replace=False) for _ in range(120)]) * 10 + 5
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{1_000_000 + p}\n"
        for p, (u, i, r) in enumerate(zip(users, items, rng.integers(1, 11, users.size) / 2))
    ))
    names = tmp_path / "movies.csv"
    names.write_text("movieId,title,genres\n" + "".join(
        f"{i},Movie {i},Drama\n" for i in np.arange(60) * 10 + 5))
    nb = execute("quickstart", tmp_path, python3_kernel,
                 scheduler=local_cluster.scheduler_address, data_path=str(ratings),
                 item_names_path=str(names), ratings_store=str(tmp_path / "ml.zarr"),
                 store_path=str(tmp_path / "model.zarr"), rank=4, iterations=3)
    results = recorded(nb)
    check_loss(results["loss_history"], 3)
    assert results["shape"] == [120, 60] and results["nnz"] == users.size
    assert set(results["recommendations"]) == {"7", "14", "21"}  # original user ids
    known = {str(i) for i in items}
    assert all(set(r) <= known for r in results["recommendations"].values())
    assert (tmp_path / "model.zarr").is_dir()  # a given store is kept
    # the item names were joined to the recommendations table
    assert any("Movie " in json.dumps(cell.get("outputs", [])) for cell in nb.cells)


def test_out_of_core_on_a_running_cluster(tmp_path, python3_kernel, local_cluster):
    nb = execute("out_of_core", tmp_path, python3_kernel,
                 scheduler=local_cluster.scheduler_address, n_users=6_000, n_items=3_000,
                 nnz=60_000, block_rows=1_500, block_cols=1_500, rank=8, iterations=3)
    results = recorded(nb)
    check_loss(results["loss_history"], 3)
    assert results["nnz"] > 50_000 and results["store_bytes"] > 0
    assert len(results["seconds_per_iteration"]) == 3
    assert all(s > 0 for s in results["seconds_per_iteration"])
    limits = results["memory_limit_bytes"]
    assert len(limits) == 2
    for worker, peak in results["peak_memory_bytes"].items():
        assert 0 < peak < limits[worker]
    assert n_figures(nb) == 1


def test_tf_migration(tmp_path, python3_kernel):
    nb = execute("tf_migration", tmp_path, python3_kernel, iterations=3)
    results = recorded(nb)
    check_loss(results["loop_losses"], 3)
    # TF's loop on WALSModel and the one-line estimator give the same numbers
    assert results["loss_gap"] < 1e-9
    assert results["factor_gap"] < 1e-6
    assert results["row_shard_sizes"] == [150, 150]
    assert n_figures(nb) == 1
