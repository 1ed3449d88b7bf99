"""``daskwals.cluster.check_store_reachable`` against a real LocalCluster."""

from __future__ import annotations

import os

import pytest

from daskwals import cluster
from daskwals.cluster import check_store_reachable


def _workers(client):
    return sorted(client.scheduler_info()["workers"])


def test_reachable_path_checks_every_worker(tmp_path, client):
    checked = check_store_reachable(tmp_path / "model.zarr", client)
    assert checked == _workers(client) and len(checked) == 2
    assert os.listdir(tmp_path) == []  # the marker file is removed


def test_active_client_is_found(tmp_path, client):
    # the `client` fixture's Client is the default one: no argument needed
    assert check_store_reachable(str(tmp_path / "ratings.zarr")) == _workers(client)


def test_unreachable_path_names_every_worker_and_the_fix(tmp_path, client):
    # A LocalCluster shares this disk, so a directory missing everywhere stands for a
    # directory missing on remote workers.
    path = tmp_path / "not-created" / "model.zarr"
    with pytest.raises(ValueError) as info:
        check_store_reachable(path, client)
    message = str(info.value)
    assert str(path) in message and "the directory does not exist" in message
    assert "2 of 2 workers" in message
    for worker in _workers(client):
        assert f"{worker}: the directory does not exist" in message
    assert "this client" in message
    assert "s3://" in message and "LocalCluster" in message and "shared" in message
    assert not (tmp_path / "not-created").exists()


def test_a_file_in_place_of_the_directory(tmp_path, client):
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(ValueError, match="exists but is not a directory"):
        check_store_reachable(tmp_path / "plain-file" / "model.zarr", client)


def test_another_disk_with_the_same_path_is_detected(tmp_path):
    # What a worker on another machine sees: the directory exists but the client's
    # marker file is not in it.
    problem = cluster._worker_problem(str(tmp_path), str(tmp_path / ".daskwals-reach-x"))
    assert "another disk" in problem
    (tmp_path / ".daskwals-reach-x").write_text("")
    assert cluster._worker_problem(str(tmp_path), str(tmp_path / ".daskwals-reach-x")) is None


def test_nothing_to_check_without_a_client_or_for_urls(tmp_path, client):
    assert check_store_reachable("s3://bucket/model.zarr", client) == []
    assert check_store_reachable("file://" + str(tmp_path / "m.zarr"), client) == _workers(client)


def test_no_active_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    try:
        distributed.default_client()
    except ValueError:
        pass
    else:
        pytest.skip("a distributed client is active")
    assert check_store_reachable(tmp_path / "missing" / "model.zarr") == []
