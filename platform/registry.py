"""Registering and loading ``lch-aae`` in MLflow's model registry.

Where runs are tracked is :mod:`lch.mlflow_store`'s business.

A registered version is an MLflow pyfunc "model from code" (:mod:`lch.pyfunc_model`) whose only
artifact is a weights file of plain tensors and primitives (:meth:`LCHModel.to_state`), so
neither MLflow nor :func:`load_lch_model` ever unpickles code.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from lch.mlflow_store import current_store, use_tracking
from lch.model import LCHModel
from lch.model_names import CHAMPION_ALIAS, REGISTERED_MODEL  # noqa: F401 (re-exported)

ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
"""A version number or an MLflow alias (letters, digits, ``_`` and ``-``)."""
MODEL_NAME = "model"
POPULATION_METRIC_TAG = "cv_population_accuracy_k20"
"""Version tag read by the promotion gate: cross-validated population accuracy at k = 20
distinct cells (lch.evaluation)."""
WEIGHTS_ARTIFACT = "weights"
WEIGHTS_FILE = "lch_model.pt"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def pip_requirements() -> list[str]:
    """List what the pyfunc needs, pinned to this environment (``lch`` must be installed).

    Given explicitly because MLflow's requirement inference spawns a subprocess (~4 s).
    """
    torch_version = torch.__version__.split("+")[0]  # the CPU/CUDA build suffix is the host's
    return [f"torch=={torch_version}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


def signature(crop_size: int) -> ModelSignature:
    """Input crops (-1, S, S) float32 in [0, 1]; output P(high) (-1,) float32."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, crop_size, crop_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
    )


def _log_pyfunc(model: LCHModel) -> mlflow.models.model.ModelInfo:
    """Log ``model`` as a pyfunc into the active run."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The signature is explicit: MLflow's advice to give an input example (to infer one by
        # running the model at logging time) does not apply.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        weights = Path(tmp) / WEIGHTS_FILE
        torch.save(model.to_state(), weights)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={WEIGHTS_ARTIFACT: str(weights)},
            signature=signature(model.config.crop_size),
            pip_requirements=pip_requirements(),
        )


def log_lch_model(
    model: LCHModel,
    *,
    cohorts: list[str],
    population_accuracy: float,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``model`` and register it as a new version of ``lch-aae``; return the version.

    The version is created with all its tags at once, so the promotion gate never sees it
    without its held-out metric.

    Parameters
    ----------
    model : LCHModel
        The whole model (encoder, decoder, classifier, latent statistics).
    cohorts : list of str
        Cohorts it was trained on (tag ``cohorts``, comma-separated).
    population_accuracy : float
        Cross-validated population accuracy at k = 20 distinct cells (tag
        :data:`POPULATION_METRIC_TAG`).
    run_id : str, optional
        Log into this run (the training run). By default the active run, or else a new run of
        the ``lch`` experiment. A run opened here is ended here.
    tags : dict, optional
        More version tags (e.g. the held-out cell AUC).

    Returns
    -------
    str
        The new version number.
    """
    experiment_id = use_tracking()
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        info = _log_pyfunc(model)
    else:
        with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id):
            info = _log_pyfunc(model)
    all_tags = {
        "cohorts": ",".join(cohorts),
        "run_id": info.run_id,
        "crop_size": str(model.config.crop_size),
        "latent_dim": str(model.config.latent_dim),
        POPULATION_METRIC_TAG: f"{population_accuracy:.6f}",
        **(tags or {}),
    }
    version = mlflow.register_model(info.model_uri, REGISTERED_MODEL, tags=all_tags)
    return str(version.version)


def _weights_path(mlmodel: Path) -> str:
    """Read the weights artifact's path inside the model folder from its ``MLmodel`` file."""
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    try:
        return flavor["artifacts"][WEIGHTS_ARTIFACT]["path"]
    except (KeyError, TypeError):
        message = f"{mlmodel}: not an LCH model (no {WEIGHTS_ARTIFACT!r} artifact)"
        raise ValueError(message) from None


class ModelNotFound(LookupError):
    """A model reference that names no registered version."""


def _model_location(uri: str, tracking_uri: str) -> str:
    """Where the artifacts of ``models:/name/version`` or ``models:/name@alias`` are stored.

    Resolved with a client bound to ``tracking_uri``: MLflow's own ``models:/`` artifact
    repository asks the process-wide registry URI instead (``./mlflow.db`` when nothing set it),
    whatever ``registry_uri`` ``download_artifacts`` is given.
    """
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = uri.rstrip("/")
    version = resolve_version(uri, tracking_uri)
    name, _ = _split_reference(uri, REGISTERED_MODEL)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.get_model_version_download_uri(name, version).rstrip("/")


def _split_reference(reference: str, name: str) -> tuple[str, str]:
    """Return (registered model, version or alias) of a reference (see :func:`resolve_version`).

    A bare version or alias belongs to ``name``.
    """
    if not reference.startswith("models:/"):
        return name, reference
    model, sep, ref = reference.removeprefix("models:/").partition("/")
    if not sep and "@" in model:
        model, ref = model.split("@", 1)
    return model, ref


def resolve_version(
    reference: str, tracking_uri: str | None = None, name: str = REGISTERED_MODEL
) -> str:
    """Return the registered version a model reference names, checked to exist.

    Parameters
    ----------
    reference : str
        A version number (``"3"``), an alias (``"challenger"``), ``models:/NAME/VERSION`` or
        ``models:/NAME@ALIAS``.
    tracking_uri : str, optional
        The MLflow store; default as in :func:`load_lch_model`.
    name : str
        The registered model a bare version or alias belongs to.

    Raises
    ------
    ModelNotFound
        No such version or alias.
    ValueError
        ``reference`` is none of the forms above.
    """
    reference = str(reference).strip()
    name, ref = _split_reference(reference, name)
    if not ref or not ALIAS_PATTERN.match(ref):
        raise ValueError(f"{reference!r}: expected a version number, an alias, "
                         "models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = tracking_uri or current_store()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if ref.isdigit():
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, ref).version)
    except mlflow.exceptions.MlflowException:
        if ref.isdigit():
            why = f"{name} has no version {ref} (`lch models` lists them)"
        else:
            why = (f"no version of {name} holds the alias {ref!r} (point it at one with "
                   f"`lch promote VERSION --alias {ref}`, or name a version)")
        raise ModelNotFound(f"{reference!r}: no such version or alias: {why}") from None


def load_lch_model(uri: str, tracking_uri: str | None = None) -> LCHModel:
    """Load a registered model from its weights file alone, without unpickling anything.

    Parameters
    ----------
    uri : str
        ``models:/lch-aae/<version>`` or ``models:/lch-aae@<alias>``.
    tracking_uri : str, optional
        The MLflow store; default the one MLflow is pointed at (``mlflow.set_tracking_uri``,
        ``$MLFLOW_TRACKING_URI``), else the embedded store under ``$LCH_HOME``.

    Returns
    -------
    LCHModel
        On CPU, in eval mode.
    """
    tracking_uri = tracking_uri or current_store()
    base = _model_location(uri, tracking_uri)
    # Two small downloads (MLmodel, then the weights), never the rest of the model folder.
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel = mlflow.artifacts.download_artifacts(
            f"{base}/MLmodel", dst_path=tmp, tracking_uri=tracking_uri
        )
        relative = _weights_path(Path(mlmodel))
        weights = mlflow.artifacts.download_artifacts(
            f"{base}/{relative}", dst_path=tmp, tracking_uri=tracking_uri
        )
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return LCHModel.from_state(state)
