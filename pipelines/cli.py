"""The `lch` command line (Typer): one command per step of the flow in ARCHITECTURE.md.

Results print as Rich tables, or as JSON with ``--json`` where another tool reads them; Ray's
own logs stay in its session log files unless ``--verbose``. Options that name a Ray cluster or
an MLflow tracking server read Ray's and MLflow's own variables (``RAY_ADDRESS``,
``MLFLOW_TRACKING_URI``) when left out.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM
from lch.labels import DEFAULT_SEGMENTER, SEGMENTERS
from lch.model_names import CHAMPION_ALIAS, REGISTERED_MODEL, model_uri, version_uri
from lch.movie_io import DEFAULT_MAX_FRAME_PIXELS
from lch.pipelines.runtime import keep_ray_logs_in_files, quiet_environment
from lch.serving.client import DEFAULT_URL
from lch.synth import make_cohort
from lch.tracking import MIN_TRACK_FRAMES

app = typer.Typer(
    name="lch",
    help="Live-cell histology on Ray, MLflow and Zarr (see the repository's ARCHITECTURE.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# No markup: summaries hold intervals such as [0.41, 0.78].
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

Segmenter = Enum("Segmenter", {name: name for name in SEGMENTERS}, type=str)
DEFAULT_SEGMENTER_CHOICE = Segmenter(DEFAULT_SEGMENTER)
DEFAULT_MODEL_URI = model_uri()


def _defaults(function) -> dict[str, Any]:
    """Return a function's keyword defaults: the CLI shows and uses them, never a copy."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


SYNTH = _defaults(make_cohort)


def _positive(value: float | None) -> float | None:
    if value is not None and not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value} is not a positive number")
    return value


# Options shared by several commands, each spelled once.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress displays.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Ray's own logs on the terminal too (else only in its session logs).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Address = Annotated[str | None, typer.Option(
    "--address", envvar="RAY_ADDRESS", show_envvar=True,
    help="Ray cluster to run on (default: a local Ray on this machine).")]
TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
    help="MLflow tracking server or database (default: the SQLite store under LCH_HOME).")]
Gpu = Annotated[bool, typer.Option("--gpu", help="Use a GPU.")]
CropSize = Annotated[int, typer.Option(min=8, help="Crop side in px.")]
MinTrackFrames = Annotated[int, typer.Option(
    min=1, help="Tracks seen in fewer frames are counted and flagged short_track in "
                "cells.parquet.")]
FieldOfViewUm = Annotated[float, typer.Option(
    callback=_positive, help="What each crop shows, in µm, resampled to --crop-size px "
                                 "(the paper's 256 px at 0.325 µm).")]
SegmenterOption = Annotated[Segmenter, typer.Option(
    help="Who outlines the cells of movies without their own `labels` (cellpose needs "
         "`pip install -e .[cellpose]` and its weights in $CELLPOSE_LOCAL_MODELS_PATH, never "
         "downloaded).")]
ModelOption = Annotated[str, typer.Option(
    "--model", help=f"A version number, models:/{REGISTERED_MODEL}/VERSION or "
                    f"models:/{REGISTERED_MODEL}@ALIAS.")]


class UsageProblem(Exception):
    """Input the user can fix (a bad manifest, an unknown cohort or model): exit status 2."""


def _setup(*, verbose: bool = False, address: str | None = None,
           tracking_uri: str | None = None) -> None:
    """Apply the run-wide options, before Ray, Ray Data or MLflow is imported.

    They say where their logs go, which cluster and which tracking store.
    """
    keep_ray_logs_in_files(not verbose)
    if not verbose:  # MLflow's INFO lines and artifact-download bars are not the user's business
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if address:
        os.environ["RAY_ADDRESS"] = address
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"lch {version('lch')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Live-cell histology on Ray, MLflow and Zarr (see the repository's ARCHITECTURE.md)."""


@app.command()
def synth(
    out_dir: Path,
    name: Annotated[str, typer.Option(help="Cohort name.")] = SYNTH["name"],
    patients: Annotated[int, typer.Option(
        min=1, help="Patients (cell lines), high and low alternating.")] = SYNTH["patients"],
    movies_per_patient: Annotated[int, typer.Option(min=1)] = SYNTH["movies_per_patient"],
    frames: Annotated[int, typer.Option(min=1)] = SYNTH["frames"],
    size: Annotated[tuple[int, int], typer.Option(
        metavar="Y X", help="Frame size in px.")] = SYNTH["size"],
    seed: int = SYNTH["seed"],
    pixel_size_um: Annotated[float | None, typer.Option(
        help="Pixel size in µm (default: 0.325 for the real look, 0.65 for the plain one).")
    ] = SYNTH["pixel_size_um"],
    look: Annotated[str, typer.Option(
        help="real (like the paper's phase-contrast cells) or plain (dark discs).")
    ] = SYNTH["look"],
) -> int:
    """Generate a synthetic cohort (TIFF movies, their truth and cohort.yaml)."""
    try:
        manifest = make_cohort(out_dir, name=name, patients=patients,
                               movies_per_patient=movies_per_patient, frames=frames,
                               size=tuple(size), seed=seed, pixel_size_um=pixel_size_um,
                               look=look)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.print(f"synthetic cohort written: {manifest}")
    return 0


@app.command()
def ingest(
    manifest: Annotated[Path, typer.Argument(help="cohort.yaml")],
    address: Address = None,
    no_segment: Annotated[bool, typer.Option(help="Stage A only (no cells or crops).")] = False,
    crop_size: CropSize = DEFAULT_CROP_SIZE,
    max_frame_pixels: Annotated[int, typer.Option(
        min=1, help="Refuse movies whose frames (height x width) exceed this, judged from the "
                    "file's header.")] = DEFAULT_MAX_FRAME_PIXELS,
    min_track_frames: MinTrackFrames = MIN_TRACK_FRAMES,
    field_of_view_um: FieldOfViewUm = DEFAULT_FIELD_OF_VIEW_UM,
    segmenter: SegmenterOption = DEFAULT_SEGMENTER_CHOICE,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Ingest a cohort: its movies into OME-Zarr (and segment them), or its folder of crops.

    With an http(s):// --address (a Ray dashboard), the whole ingestion is submitted as a Ray
    Job to that cluster.
    """
    from lch.labels import check_segmenter
    from lch.manifest import ManifestError, load_manifest
    from lch.pipelines.ingest import convert_cohort, submit_ingest_job
    from lch.pipelines.segment import segment_cohort

    segmentation = {"crop_size": crop_size, "segmenter": segmenter.value,
                    "field_of_view_um": field_of_view_um, "min_track_frames": min_track_frames}
    if address and address.startswith(("http://", "https://")):
        # The segmenter is checked by the job, where its weights must be.
        extra = [f"--{key.replace('_', '-')}={value}" for key, value in segmentation.items()]
        extra += [f"--max-frame-pixels={max_frame_pixels}"]
        extra += ["--no-segment"] if no_segment else []
        return submit_ingest_job(manifest, address, extra_args=extra)
    _setup(verbose=verbose, address=address)
    try:
        cohort = load_manifest(manifest)
        if cohort.crops is not None:
            return _ingest_crops(cohort, segmentation, progress=not quiet)
        if not no_segment:
            check_segmenter(segmenter.value)  # before any movie is converted
        summary = convert_cohort(manifest, progress=not quiet, max_frame_pixels=max_frame_pixels)
    except ManifestError as exc:
        raise UsageProblem(exc) from exc
    out.print(summary.format())
    status = 1 if summary.failed else 0
    if not no_segment:
        cells = segment_cohort(summary.cohort, progress=not quiet, **segmentation)
        out.print(cells.format())
        status = status or (1 if cells.movies_failed else 0)
    return status


def _ingest_crops(manifest, segmentation: dict[str, Any], *, progress: bool) -> int:
    """Ingest a crop folder's cells straight into the cohort's cell store (no movies)."""
    from lch.pipelines.ingest_crops import ingest_crops

    summary = ingest_crops(manifest, crop_size=segmentation["crop_size"],
                           field_of_view_um=segmentation["field_of_view_um"],
                           min_track_frames=segmentation["min_track_frames"], progress=progress)
    out.print(summary.format())
    return 1 if summary.bad_names else 0


@app.command()
def segment(
    cohort: str,
    address: Address = None,
    crop_size: CropSize = DEFAULT_CROP_SIZE,
    min_track_frames: MinTrackFrames = MIN_TRACK_FRAMES,
    field_of_view_um: FieldOfViewUm = DEFAULT_FIELD_OF_VIEW_UM,
    segmenter: SegmenterOption = DEFAULT_SEGMENTER_CHOICE,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Segment and track a cohort's stored movies into cells and crops (Ray Data)."""
    _setup(verbose=verbose, address=address)
    from lch.pipelines.segment import segment_cohort

    try:
        summary = segment_cohort(cohort, progress=not quiet, crop_size=crop_size,
                                 segmenter=segmenter.value, field_of_view_um=field_of_view_um,
                                 min_track_frames=min_track_frames)
    except FileNotFoundError as exc:
        raise UsageProblem(exc) from exc
    out.print(summary.format())
    return 1 if summary.movies_failed else 0


@app.command()
def train(
    cohort: Annotated[list[str], typer.Option(help="Cohort name (repeatable).")],
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Mini-batch per worker.")] = None,
    latent_dim: Annotated[int | None, typer.Option(min=1)] = None,
    width: Annotated[float | None, typer.Option(
        callback=_positive, help="Multiplier on the paper's channels.")] = None,
    lr: Annotated[float | None, typer.Option(
        callback=_positive, help="Adam learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Split, weights and population draws.")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per worker.")] = False,
    report_cells: Annotated[int | None, typer.Option(
        min=1, help="Held-out cells exaggerated in the run's report.")] = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Train the AAE on cohorts (Ray Train), track it in MLflow and register it.

    Options left out take TrainSettings' defaults (lch.pipelines.train).
    """
    _setup(verbose=verbose, address=address, tracking_uri=tracking_uri)
    from lch.pipelines.train import TrainSettings
    from lch.pipelines.train import train as run_training
    from lch.training import TrainingInputError

    given = {"workers": workers, "epochs": epochs, "batch_size": batch_size,
             "latent_dim": latent_dim, "width": width, "lr": lr, "seed": seed,
             "report_cells": report_cells}
    settings = TrainSettings(cohorts=tuple(cohort), gpu=gpu,
                             **{k: v for k, v in given.items() if v is not None})
    try:
        summary = run_training(settings, progress=not quiet)
    except TrainingInputError as exc:
        raise UsageProblem(exc) from exc
    out.print(summary.format())
    return 0


@app.command()
def predict(
    cohort: Annotated[str, typer.Option(help="The stored cohort to score.")],
    model: ModelOption = DEFAULT_MODEL_URI,
    out_path: Annotated[str | None, typer.Option(
        "--out", help="Where to write the per-cell table (default "
                      "cohorts/<cohort>/predictions/<version>.parquet under LCH_HOME).")] = None,
    force: Annotated[bool, typer.Option(help="Compute again if already stored.")] = False,
    gpu: Gpu = False,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    as_json: AsJson = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Score a stored cohort's cells and call each patient (Ray Data, logged to MLflow)."""
    _setup(verbose=verbose, address=address, tracking_uri=tracking_uri)
    from lch.pipelines.predict import predict_cohort
    from lch.registry import ModelNotFound
    from lch.training import TrainingInputError

    try:
        summary = predict_cohort(cohort, _model_uri(model), out=out_path, force=force, gpu=gpu,
                                 progress=not (quiet or as_json))
    except (TrainingInputError, ModelNotFound, ValueError) as exc:
        raise UsageProblem(exc) from exc
    if as_json:
        _print_json(summary.to_dict())
    else:
        out.print(summary.format())
    return 0


@app.command(help=f"List the registered versions of {REGISTERED_MODEL} with their aliases.")
def models(tracking_uri: TrackingUri = None, as_json: AsJson = False) -> int:
    """List the registered model versions, as a table or JSON (the help is the decorator's)."""
    _setup(tracking_uri=tracking_uri)
    from lch.mlflow_store import use_tracking
    from lch.promotion import list_versions

    use_tracking()
    rows = list_versions()
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return 0
    if not rows:
        out.print(f"no versions of {REGISTERED_MODEL} registered yet (run `lch train`)")
        return 0
    table = Table("version", "aliases", "pop.acc@20", "created", "cohorts", "run",
                  title=f"{REGISTERED_MODEL} versions")
    for r in rows:
        table.add_row(r.version, ",".join(r.aliases) or "-",
                      "-" if r.metric is None else f"{r.metric:.3f}", r.created, r.cohorts,
                      r.run_id or "-")
    out.print(table)
    return 0


@app.command()
def promote(
    version: str,
    alias: Annotated[str, typer.Option(help="The alias to point at it.")] = CHAMPION_ALIAS,
    force: Annotated[bool, typer.Option(
        help="Promote even if its cross-validated population accuracy is lower.")] = False,
    tracking_uri: TrackingUri = None,
) -> int:
    """Point an alias at a model version."""
    _setup(tracking_uri=tracking_uri)
    from lch.mlflow_store import use_tracking
    from lch.promotion import PromotionRefused
    from lch.promotion import promote as promote_version

    use_tracking()
    try:
        out.print(promote_version(version, alias, force=force))
    except PromotionRefused as exc:
        err.print(f"refused: {exc}")
        return 1
    except ValueError as exc:
        raise UsageProblem(exc) from exc
    return 0


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address (loopback only by default).")]
    = "127.0.0.1",
    port: int = 8000,
    model_alias: Annotated[str, typer.Option(help="The alias whose version answers.")]
    = CHAMPION_ALIAS,
    poll_interval: Annotated[float, typer.Option(
        callback=_positive, help="Seconds between checks for a newly promoted version.")]
    = 10.0,
    public_docs: Annotated[bool, typer.Option(
        help="Serve /docs and /openapi.json without $LCH_API_TOKEN (with a token set they "
             "need it like every route but /healthz).")] = False,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    verbose: Verbose = False,
) -> int:
    """Serve classification and exaggeration over HTTP (Ray Serve) until Ctrl-C."""
    from ray import serve as ray_serve

    _setup(verbose=verbose, address=address, tracking_uri=tracking_uri)
    from lch.pipelines.runtime import init_ray
    from lch.serving.app import build_app

    init_ray()
    ray_serve.start(http_options={"host": host, "port": port})
    application = build_app({"model_alias": model_alias, "poll_interval_s": poll_interval,
                             "public_docs": public_docs})
    out.print(f"serving {model_uri(model_alias)} on http://{host}:{port} (OpenAPI: /docs); "
              "Ctrl-C stops")
    try:
        ray_serve.run(application, name="lch", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        ray_serve.shutdown()
    return 0


@app.command()
def classify(
    file: Annotated[Path, typer.Argument(help="A TIFF movie or frame.")],
    url: Annotated[str, typer.Option(help="The Serve endpoint.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        envvar="LCH_API_TOKEN", show_envvar=True, help="Bearer token.")] = None,
    pixel_size_um: Annotated[float | None, typer.Option(
        callback=_positive,
        help="The movie's pixel size (the server's default: the paper's 0.325).")] = None,
    as_json: AsJson = False,
) -> int:
    """Classify a movie through the Serve endpoint: P(high) per cell and the population call."""
    from lch.serving.client import LCHClient, LCHClientError

    try:
        with LCHClient(url, token=token) as client:
            answer = client.classify(file, pixel_size_um=pixel_size_um)
    except LCHClientError as exc:
        err.print(f"error: {exc}")
        return 1
    if as_json:
        _print_json(answer)
        return 0
    population = answer["population"]
    if population["call"] is None:
        out.print(f"{file}: no cells found (model version {answer['model_version']})")
        return 0
    enough = "" if population["reaches_minimum"] else (
        f" (fewer than {population['min_cells']} cells: treat with caution)")
    out.print(f"{file}: {population['call']} metastatic, mean P(high) "
              f"{population['p_high']:.3f} over {population['n_cells']} cells{enough}; "
              f"model version {answer['model_version']}")
    return 0


def _model_uri(value: str) -> str:
    return version_uri(value) if value.isdigit() else value


@app.command()
def exaggerate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the montage and tables.")],
    model: ModelOption = DEFAULT_MODEL_URI,
    cohort: Annotated[str | None, typer.Option(help="Take cells from this stored cohort.")]
    = None,
    cells: Annotated[int | None, typer.Option(
        min=2, help="How many cells, half high, half low (default: as many as the report logged "
                    "with every training run).")] = None,
    cell: Annotated[list[int] | None, typer.Option(
        help="A cell's crop_index (repeatable).")] = None,
    crop: Annotated[list[Path] | None, typer.Option(
        help="A PNG/TIFF crop (repeatable).")] = None,
    sigmas: Annotated[str | None, typer.Option(
        help="Shifts s, comma-separated, in SDs of the training cells' scores "
             "(default: -4 to 4 in steps of 1).")] = None,
    method: Annotated[str, typer.Option(
        help="linear: along the discriminant direction (the paper's); latent-shift: along the "
             "gradient of the re-encoded image's logit (Cohen et al. 2021), scaled to the same "
             "logit steps.")] = "linear",
    seed: Annotated[int, typer.Option(help="Which cells are picked.")] = 0,
    tracking_uri: TrackingUri = None,
) -> int:
    """Decode cells pushed along the discriminant direction; write the montage and trends."""
    _setup(tracking_uri=tracking_uri)
    from lch.cellstore import CellStoreError, open_cells
    from lch.classify import HIGH, LOW, binary_labels
    from lch.exaggerate import exaggerate as exaggerate_crops
    from lch.exaggerate import exaggerate_stored_cells
    from lch.exaggeration_report import (
        REAL_CELLS,
        REPORT_CELLS,
        pick_cells,
        real_cell_bounds,
        real_cell_hypotheses,
        write_report,
    )
    from lch.paths import cohort_dir
    from lch.registry import ModelNotFound, load_lch_model
    from lch.trends import spearman_table

    if not cohort and not crop:
        raise UsageProblem("give --cohort (cells of a stored cohort) or --crop FILE")
    options: dict[str, Any] = {"method": method}
    if sigmas is not None:
        try:
            options["sigmas"] = [float(s) for s in sigmas.split(",")]
        except ValueError as exc:
            raise UsageProblem(f"--sigmas {sigmas!r}: not comma-separated numbers") from exc
    hypotheses = bounds = None
    try:
        lch_model = load_lch_model(_model_uri(model))
        if cohort:
            table, crops = open_cells(cohort_dir(cohort))
            indices = np.asarray(cell) if cell else pick_cells(table, cells or REPORT_CELLS,
                                                                seed)
            result = exaggerate_stored_cells(lch_model, table, crops, indices, **options)
            if {HIGH, LOW} <= set(binary_labels(table["label"].to_numpy())):
                real = np.sort(pick_cells(table, REAL_CELLS, seed))
                rows = table.set_index("crop_index").loc[real].reset_index()
                features, bounds = real_cell_bounds(
                    lch_model, result,
                    crops.get_orthogonal_selection((real, slice(None), slice(None))))
                hypotheses = real_cell_hypotheses(result, rows, features, seed)
        else:
            result = exaggerate_crops(lch_model, [str(c) for c in crop],
                                      cells=[c.name for c in crop], **options)
    except (CellStoreError, ModelNotFound, ValueError) as exc:
        raise UsageProblem(exc) from exc
    paths = write_report(result, out_dir, hypotheses, bounds)
    out.print(spearman_table(result.table).to_string(index=False, float_format="%.3f"))
    if hypotheses is not None:
        out.print(f"\nthe strongest trends on {cohort}'s real cells, each feature alone:")
        out.print(hypotheses.to_string(index=False, float_format="%.3f"))
        out.print(f"\neach trend beside the bound {cohort}'s cells set and how faithfully the "
                  "decoder draws the feature on them (fidelity):")
        out.print(bounds.to_string(index=False, float_format="%.3f"))
    out.print(f"montage: {paths['montage']}\nmorphology vs sigma: {paths['table']}")
    return 0


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="The synthetic cohort's and the training's.")] = 0,
    verbose: Verbose = False,
) -> int:
    """Run the whole loop on a generated synthetic cohort, on this machine."""
    _setup(verbose=verbose)
    from lch.pipelines.demo import run_demo

    return run_demo(seed)


def _setup_error(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a problem of the user's environment, not a bug.

    That is an unusable data root, tracking store or Ray token, a segmenter without its package
    or weights, or a cohort another run is writing.
    """
    from lch.cohort_lock import CohortLocked
    from lch.labels import SegmenterUnavailable
    from lch.mlflow_store import TrackingConfigError
    from lch.pipelines.runtime import RaySecurityError
    from lch.storage import StorageError

    return isinstance(exc, StorageError | TrackingConfigError | RaySecurityError | CohortLocked
                      | SegmenterUnavailable | UsageProblem)


def main(argv: list[str] | None = None) -> int:
    """Run ``lch`` with ``argv`` (default: the process's); return the exit status."""
    quiet_environment()
    try:
        status = app(args=argv, prog_name="lch", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: Typer's message names the option
        exc.show() if hasattr(exc, "show") else err.print(f"error: {exc.format_message()}")
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 1
    except Exception as exc:
        if not _setup_error(exc):
            raise
        err.print(f"error: {exc}", markup=False)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
