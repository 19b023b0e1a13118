"""Starting or joining Ray, sized for the machine it runs on and closed by default.

A local instance binds every Ray component to 127.0.0.1 (see :mod:`lch.pipelines`, which sets
this before Ray is imported) and requires Ray's token authentication, with a random token per
session in a private file; joining a cluster (``RAY_ADDRESS``) also asks for token
authentication, with the operator's ``RAY_AUTH_TOKEN``.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

# Defaults that keep Ray and MLflow from writing outside the project or phoning home;
# a user's own setting of any of them wins.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
# Ray's own variables for token authentication (Ray >= 2.52).
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
LOOPBACK = "127.0.0.1"

log = logging.getLogger(__name__)


def quiet_environment() -> None:
    """Apply :data:`QUIET_ENV` as defaults to this process's environment."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# Ray gives each worker the CPUs it asked for and sets OMP_NUM_THREADS to match; Zarr's codec
# thread pool and Blosc's threads would otherwise each spread over every core of the node.
WORKER_ENV = {"ZARR_THREADING__MAX_WORKERS": "1", "BLOSC_NTHREADS": "1"}


class RaySecurityError(RuntimeError):
    """Ray would start or be reached without its protections; the message says how to fix it."""


def _auth_mode() -> str:
    """Ray's authentication mode for this process (:mod:`lch.pipelines` defaults it to token)."""
    return os.environ.get(AUTH_MODE_ENV, "token").lower()


def has_auth_token() -> bool:
    """Whether this process has a Ray token from the operator (variable or file)."""
    return bool(os.environ.get(TOKEN_ENV)) or bool(os.environ.get(TOKEN_PATH_ENV))


def require_token_auth(address: str) -> None:
    """Ask for token authentication towards the cluster at ``address``.

    Unless the operator opted out with ``RAY_AUTH_MODE=disabled``; without a token, say how to
    provide one.
    """
    if _auth_mode() == "token" and not has_auth_token():
        raise RaySecurityError(
            f"the Ray cluster at {address} needs its authentication token: set {TOKEN_ENV} "
            f"(or {TOKEN_PATH_ENV}, a file holding it), e.g. from the cluster's KubeRay secret; "
            f"only for a cluster started without authentication, set {AUTH_MODE_ENV}=disabled"
        )


def ensure_local_token(folder: str | None = None) -> str | None:
    """Token authentication for a Ray instance this process starts.

    The operator's ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` is used if set; otherwise a random
    token is written, readable by this user only, to a new private folder under ``folder`` (default
    the system's temp dir), removed when this process exits. Ray's processes inherit the setting.
    An explicit ``RAY_AUTH_MODE=disabled`` is respected, with a warning.

    Returns
    -------
    str or None
        The token file written, or None if none was needed.
    """
    if _auth_mode() != "token":
        log.warning("%s=%s: the local Ray instance takes jobs from anyone who can reach it",
                    AUTH_MODE_ENV, _auth_mode())
        return None
    if has_auth_token():
        return None
    private = tempfile.mkdtemp(prefix="lch-ray-auth-", dir=folder)  # mode 0700
    path = os.path.join(private, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ[TOKEN_PATH_ENV] = path
    return path


_LOGS = {"to_files_only": False}
# Ray Data's own logging configuration, its console handler at WARNING.
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def keep_ray_logs_in_files(keep: bool = True) -> None:
    """Leave Ray's worker output and Ray Data's INFO logs in the Ray session's log files.

    They go to ``<temp dir>/session_latest/logs`` instead of being echoed here: the CLI's
    default, which its ``--verbose`` turns off. Call it before :mod:`ray.data` is imported and
    Ray started; a user's own ``RAY_DATA_LOGGING_CONFIG`` wins.
    """
    _LOGS["to_files_only"] = keep
    if keep:
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))


def keep_serve_logs_in_files() -> None:
    """Keep Serve's INFO lines in this process off the terminal while Ray's logs stay in files.

    ``import ray.serve`` sets its logger to INFO, so call this after that import.
    """
    if _LOGS["to_files_only"]:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _check_loopback() -> None:
    """Refuse to go on with a local instance that advertises (and so binds) a network address."""
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        ray.shutdown()
        raise RaySecurityError(
            f"the local Ray instance bound {ip}, not {LOOPBACK}: Ray was imported before "
            "lch.pipelines could keep it on loopback; import lch.pipelines first, or set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before starting Python"
        )


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join the Ray cluster at ``address`` / ``$RAY_ADDRESS``, or start a local one.

    A local instance gets one logical CPU per core, no dashboard (the Jobs API is only needed
    on a cluster started with ``ray start --head``), every component on 127.0.0.1 and token
    authentication (:func:`ensure_local_token`). Joining a cluster asks for token authentication
    (:func:`require_token_auth`). Workers get :data:`WORKER_ENV`. Calling it again is a no-op.

    Raises
    ------
    RaySecurityError
        If the cluster needs a token that is not set, or a local instance would not be on
        loopback.
    """
    if ray.is_initialized():
        return
    quiet_environment()
    if _LOGS["to_files_only"]:
        kwargs.setdefault("log_to_driver", False)
    _start_or_join(address or os.environ.get("RAY_ADDRESS"), kwargs)


def _start_or_join(address: str | None, kwargs: dict) -> None:
    if address:
        require_token_auth(address)
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
    ensure_local_token(os.environ.get("RAY_TMPDIR"))
    ray.init(logging_level="WARNING", **kwargs)
    _check_loopback()


def cluster_cpus() -> int:
    """Whole CPUs the joined cluster offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
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
    """Start a multi-node Ray cluster on this machine (Ray's own ``ray.cluster_utils.Cluster``).

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
    token_path = ensure_local_token(temp_root)
    store = object_store_mb << 20
    # The default ports may be held by another Ray instance on this machine (the workers'
    # agents get free ones from Cluster itself).
    head = {
        "num_cpus": head_cpus, "object_store_memory": store, "include_dashboard": dashboard,
        "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
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
        if token_path is not None:
            os.environ.pop(TOKEN_PATH_ENV, None)
        shutil.rmtree(temp_root, ignore_errors=True)
