"""Checks for running daskwals on a dask.distributed cluster.

The workers read and write the ratings and model stores themselves, so a store path
must name the same directory on every worker and on the client. On a LocalCluster that
is always true; with a scheduler on another machine a local path such as ``/tmp/m.zarr``
may exist on every machine and still be a different directory on each of them, and the
fit would then fail, or worse, write factors the client never sees.
:func:`check_store_reachable` finds that out before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

__all__ = ["check_store_reachable"]

_FIX = (
    "Workers read and write the store themselves: use a path on a file system shared by "
    "the client and every worker (e.g. an NFS or Lustre mount), a URL such as "
    "s3://bucket/model.zarr (a model store only; ratings stores need a file system path), "
    "or a LocalCluster on this machine."
)


def check_store_reachable(path: str | os.PathLike, client=None) -> list[str]:
    """Check that every worker of the active cluster can reach the store at ``path``.

    With a dask.distributed client (``client``, or else the active default client; none
    is started), one small task runs on every worker (``client.run``) and checks that
    the parent directory of ``path`` exists and is writable there, and that a marker
    file this client writes into it is visible there, i.e. that it is the *same*
    directory as on the client, not a homonym on another machine's disk. The client's
    own side is checked too. Without a distributed client (threads, processes or the
    synchronous scheduler, which share this machine's disk) and for URLs such as
    ``s3://...`` (shared by construction) nothing is checked.

    Parameters
    ----------
    path : str or os.PathLike
        A ratings or model store path (it need not exist yet), or a URL.
    client : distributed.Client, optional
        The client whose workers to check; default the active one, if any.

    Returns
    -------
    list of str
        The addresses of the workers checked (empty when nothing was checked).

    Raises
    ------
    ValueError
        Naming the workers (and the client, if it is one) that cannot reach the store's
        directory, why, and how to fix it.

    Examples
    --------
    >>> from distributed import Client                       # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")              # doctest: +SKIP
    >>> check_store_reachable("/shared/models/m.zarr")       # doctest: +SKIP
    ['tcp://10.0.0.6:40331', 'tcp://10.0.0.7:39117']
    """
    path = os.fspath(path)
    if _is_url(path):
        return []
    if path.startswith("file://"):
        path = path[len("file://"):]
    if client is None:
        client = _active_client()
        if client is None:
            return []
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    marker = os.path.join(parent, f".daskwals-reach-{uuid.uuid4().hex}")
    client_problem = _directory_problem(parent)
    if client_problem is None:
        try:
            with open(marker, "x"):
                pass
        except OSError as exc:
            client_problem = f"cannot create a file there ({exc.strerror or exc})"
    try:
        results = client.run(_worker_problem, parent, marker if client_problem is None else None)
    finally:
        if client_problem is None:
            with contextlib.suppress(OSError):
                os.remove(marker)
    problems = {worker: why for worker, why in sorted(results.items()) if why is not None}
    if problems or client_problem is not None:
        lines = [f"  {worker}: {why}" for worker, why in problems.items()]
        if client_problem is not None:
            lines.append(f"  this client: {client_problem}")
        who = f"{len(problems)} of {len(results)} workers" if problems else "this client"
        raise ValueError(
            f"the store {path!r} is not reachable from every part of the dask cluster: "
            f"{who} cannot use its directory {parent!r}:\n" + "\n".join(lines) + "\n" + _FIX
        )
    return sorted(results)


def _is_url(path):
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme != "file"


def _active_client():
    """The active distributed client, or None; never starts one."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _directory_problem(directory):
    """Why this process cannot write into ``directory``, or None if it can."""
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            return "the parent path exists but is not a directory"
        return "the directory does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "the directory is not writable"
    return None


def _worker_problem(directory, marker):
    """Task run on every worker: why the directory is unusable there, or None."""
    problem = _directory_problem(directory)
    if problem is not None:
        return problem
    if marker is not None and not _sees(marker):
        return ("the directory exists but is not the client's (a file written there by the "
                "client is not visible): it is on another disk")
    return None


def _sees(marker, attempts=3, wait=0.5):
    """Whether ``marker`` is visible; a network file system may show a new file late."""
    directory, name = os.path.split(marker)
    for attempt in range(attempts):
        # listing the directory makes an NFS client revalidate it (close-to-open)
        if os.path.exists(marker) or name in os.listdir(directory):
            return True
        if attempt + 1 < attempts:
            time.sleep(wait)
    return False
