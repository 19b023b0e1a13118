"""Starting or joining Ray, sized for the machine it runs on; a local multi-node cluster."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

# Defaults that keep Ray and MLflow from writing outside the project or phoning home;
# a user's own setting of any of them wins.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def quiet_environment() -> None:
    """Apply :data:`QUIET_ENV` as defaults to this process's environment."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# Ray gives each worker the CPUs it asked for and sets OMP_NUM_THREADS to match; Zarr's codec
# thread pool and Blosc's threads would otherwise each spread over every core of the node.
WORKER_ENV = {"ZARR_THREADING__MAX_WORKERS": "1", "BLOSC_NTHREADS": "1"}


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join the Ray cluster at ``address`` / ``$RAY_ADDRESS``, or start a local one.

    A local instance gets one logical CPU per core and no dashboard (the Jobs API is only needed
    on a cluster started with ``ray start --head``). Workers get :data:`WORKER_ENV`.
    Calling it again is a no-op.
    """
    if ray.is_initialized():
        return
    quiet_environment()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster's workers inherit their node's environment, not ours: pass it along.
        runtime_env = kwargs.pop("runtime_env", None) or {}
        env_vars = {**WORKER_ENV, **runtime_env.get("env_vars", {})}
        kwargs["runtime_env"] = {**runtime_env, "env_vars": env_vars}
        ray.init(address=address, logging_level="WARNING", **kwargs)
        return
    # Workers of a local instance inherit this environment, so the workers Ray starts ahead of
    # time are usable at once (a job-level runtime_env would start a second set).
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    kwargs.setdefault("num_cpus", os.cpu_count())
    kwargs.setdefault("include_dashboard", False)
    ray.init(logging_level="WARNING", **kwargs)


def cluster_cpus() -> int:
    """Whole CPUs the joined cluster offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_cluster(
    workers: int = 2,
    *,
    cpus_per_worker: float = 1,
    head_cpus: float = 0,
    dashboard: bool = False,
    object_store_mb: int = 150,
) -> Iterator[Cluster]:
    """A multi-node Ray cluster on this machine (Ray's own ``ray.cluster_utils.Cluster``).

    For tests and benchmarks of cluster mode: a head node and ``workers`` worker nodes, each a
    raylet with its own object store and worker processes, as on separate machines. Join it
    with ``init_ray(cluster.address)`` (or ``$RAY_ADDRESS``); :func:`ray.shutdown` and the
    nodes' teardown happen on exit.

    Parameters
    ----------
    workers : int
        Worker nodes to add.
    cpus_per_worker, head_cpus : float
        Logical CPUs of each worker node and of the head (0: tasks never run on the head, as
        on a cluster whose head only coordinates).
    dashboard : bool
        Start the dashboard (needed by the state API, ``ray.util.state``) on a free port of
        127.0.0.1.
    object_store_mb : int
        Object store of each node.
    """
    from ray.cluster_utils import Cluster

    quiet_environment()
    # Cluster records its head's address in <RAY_TMPDIR>/ray/ray_current_cluster, where any
    # plain ray.init() on this machine would find and join it: keep that file, the sessions and
    # their unix sockets in a short folder of our own.
    temp_root = tempfile.mkdtemp(prefix="lchc", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_root
    store = object_store_mb << 20
    # The default ports may be held by another Ray instance on this machine (the workers'
    # agents get free ones from Cluster itself).
    head = {
        "num_cpus": head_cpus, "object_store_memory": store, "include_dashboard": dashboard,
        "dashboard_port": _free_port(), "dashboard_agent_listen_port": _free_port(),
    }
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(workers):
            cluster.add_node(num_cpus=cpus_per_worker, object_store_memory=store)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()  # a driver left connected would wait on the dead nodes
        if cluster is not None:
            cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp_root, ignore_errors=True)
