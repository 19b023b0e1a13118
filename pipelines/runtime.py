"""Starting or joining Ray, sized for the machine it runs on."""

from __future__ import annotations

import os

import ray

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
