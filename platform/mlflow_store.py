"""Where MLflow tracks LCH's runs: the tracking store and the ``lch`` experiment.

Tracking defaults to an embedded SQLite store, ``$LCH_HOME/mlflow.db``, with the ``lch``
experiment's artifacts in ``$LCH_HOME/mlartifacts`` (never ``./mlruns``); ``MLFLOW_TRACKING_URI``
wins when set (a team server decides where its artifacts go).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from lch.paths import is_url, join, lch_home

EXPERIMENT = "lch"


class TrackingConfigError(RuntimeError):
    """No usable MLflow tracking store; the message says which variable to set."""


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, or the SQLite store ``$LCH_HOME/mlflow.db``.

    Raises
    ------
    TrackingConfigError
        ``LCH_HOME`` is an object-store URL and ``MLFLOW_TRACKING_URI`` is not set: SQLite
        needs a local file, so a remote data root needs a tracking server (or database).
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = lch_home()
    if is_url(home):
        raise TrackingConfigError(
            f"LCH_HOME={home} is an object store, which cannot hold MLflow's default SQLite "
            "tracking store: set MLFLOW_TRACKING_URI to a tracking server (http://host:5000) "
            "or a database URI"
        )
    return f"sqlite:///{home / 'mlflow.db'}"


def current_store() -> str:
    """Return the store MLflow is pointed at if anyone pointed it, else :func:`tracking_uri`.

    MLflow's own fallback would be ``./mlflow.db`` in the working directory.
    """
    return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else tracking_uri()


def artifact_location() -> str | None:
    """Return where the ``lch`` experiment keeps artifacts.

    ``$LCH_HOME/mlartifacts`` for the embedded store, None (the server's choice) when
    ``MLFLOW_TRACKING_URI`` is set.

    With an object-store ``LCH_HOME`` and a database ``MLFLOW_TRACKING_URI`` (no server to
    choose), artifacts go to ``<LCH_HOME>/mlartifacts`` too, not to ``./mlruns``; MLflow writes
    them with boto3, which reads the same ``AWS_*`` variables (or ``MLFLOW_S3_ENDPOINT_URL``).
    """
    tracking, home = os.environ.get("MLFLOW_TRACKING_URI"), lch_home()
    if is_url(home):
        served = (tracking or "").startswith(("http://", "https://", "databricks"))
        return None if served else str(join(home, "mlartifacts"))
    if tracking:
        return None
    return (home / "mlartifacts").as_uri()


def use_tracking() -> str:
    """Point MLflow at :func:`tracking_uri` and make sure the ``lch`` experiment exists.

    Returns
    -------
    str
        The experiment id.
    """
    uri, location = tracking_uri(), artifact_location()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); put back the user's
    # setting, or a later change of LCH_HOME in this process would be silently ignored.
    if user_setting is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(EXPERIMENT, artifact_location=location)
