"""The `lch` command line: one subcommand per step of the flow in ARCHITECTURE.md."""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np

from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM
from lch.labels import DEFAULT_SEGMENTER, SEGMENTERS
from lch.model_names import CHAMPION_ALIAS, REGISTERED_MODEL, model_uri
from lch.movie_io import DEFAULT_MAX_FRAME_PIXELS
from lch.pipelines.runtime import quiet_environment
from lch.synth import make_cohort
from lch.tracking import MIN_TRACK_FRAMES


def _defaults(function) -> dict:
    """A function's keyword defaults: the CLI shows and uses them, never a copy."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _cmd_synth(args: argparse.Namespace) -> int:
    manifest = make_cohort(
        args.out_dir,
        name=args.name,
        patients=args.patients,
        movies_per_patient=args.movies_per_patient,
        frames=args.frames,
        size=tuple(args.size),
        seed=args.seed,
    )
    print(f"synthetic cohort written: {manifest}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from lch.labels import check_segmenter
    from lch.manifest import ManifestError, load_manifest
    from lch.pipelines.ingest import convert_cohort, submit_ingest_job
    from lch.pipelines.segment import segment_cohort

    if args.address:  # the segmenter is checked by the job, where its weights must be
        extra = ["--crop-size", str(args.crop_size), "--max-frame-pixels",
                 str(args.max_frame_pixels), "--segmenter", args.segmenter,
                 "--field-of-view-um", str(args.field_of_view_um),
                 "--min-track-frames", str(args.min_track_frames)]
        extra += ["--no-segment"] if args.no_segment else []
        return submit_ingest_job(args.manifest, args.address, extra_args=extra)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if manifest.crops is not None:
        return _ingest_crops(manifest, args)
    if not args.no_segment:
        check_segmenter(args.segmenter)  # before any movie is converted
    try:
        summary = convert_cohort(
            args.manifest, progress=not args.quiet, max_frame_pixels=args.max_frame_pixels
        )
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format(), flush=True)
    status = 1 if summary.failed else 0
    if not args.no_segment:
        cells = segment_cohort(summary.cohort, progress=not args.quiet,
                               **_segmentation_kwargs(args))
        print(cells.format())
        status = status or (1 if cells.movies_failed else 0)
    return status


def _ingest_crops(manifest, args: argparse.Namespace) -> int:
    """A crop folder's cells straight into the cohort's cell store (no movies to convert)."""
    from lch.manifest import ManifestError
    from lch.pipelines.ingest_crops import ingest_crops

    try:
        summary = ingest_crops(manifest, crop_size=args.crop_size,
                               field_of_view_um=args.field_of_view_um,
                               min_track_frames=args.min_track_frames, progress=not args.quiet)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if summary.bad_names else 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from lch.pipelines.segment import segment_cohort

    try:
        summary = segment_cohort(args.cohort, progress=not args.quiet,
                                 **_segmentation_kwargs(args))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if summary.movies_failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lch.pipelines.demo import run_demo

    return run_demo(args.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    from lch.pipelines.train import TrainingInputError, TrainSettings, train

    # Options left out keep TrainSettings' defaults (defined once, there).
    names = ("workers", "epochs", "batch_size", "latent_dim", "width", "lr", "seed")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        summary = train(TrainSettings(cohorts=tuple(args.cohort), gpu=args.gpu, **given))
    except TrainingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from lch.pipelines.predict import predict_cohort
    from lch.registry import ModelNotFound
    from lch.training import TrainingInputError

    try:
        summary = predict_cohort(args.cohort, args.model, out=args.out, force=args.force,
                                 gpu=args.gpu, progress=not args.quiet, address=args.address)
    except (TrainingInputError, ModelNotFound, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from lch.promotion import list_versions
    from lch.registry import use_tracking

    use_tracking()
    rows = list_versions()
    if not rows:
        print(f"no versions of {REGISTERED_MODEL} registered yet (run `lch train`)")
        return 0
    header = ("version", "aliases", "pop.acc@20", "created", "cohorts", "run")
    print("{:>7}  {:<18} {:>10}  {:<25} {:<20} {}".format(*header))
    for r in rows:
        metric = "-" if r.metric is None else f"{r.metric:.3f}"
        aliases = ",".join(r.aliases) or "-"
        print(f"{r.version:>7}  {aliases:<18} {metric:>10}  {r.created:<25} {r.cohorts:<20} "
              f"{r.run_id or '-'}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from lch.promotion import PromotionRefused, promote
    from lch.registry import use_tracking

    use_tracking()
    try:
        print(promote(args.version, args.alias, force=args.force))
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ray import serve

    from lch.pipelines.runtime import init_ray
    from lch.serving.app import build_app

    init_ray()
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app({"model_alias": args.model_alias, "poll_interval_s": args.poll_interval,
                     "public_docs": args.public_docs})
    serve.run(app, name="lch", route_prefix="/")
    print(f"serving {model_uri(args.model_alias)} on http://{args.host}:{args.port} "
          f"(OpenAPI: /docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from lch.serving.client import LCHClient, LCHClientError

    try:
        with LCHClient(args.url, token=args.token) as client:
            answer = client.classify(args.file, pixel_size_um=args.pixel_size_um)
    except LCHClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    population = answer["population"]
    if population["call"] is None:
        print(f"{args.file}: no cells found (model version {answer['model_version']})")
        return 0
    enough = "" if population["reaches_minimum"] else (
        f" (fewer than {population['min_cells']} cells: treat with caution)")
    print(f"{args.file}: {population['call']} metastatic, mean P(high) "
          f"{population['p_high']:.3f} over {population['n_cells']} cells{enough}; "
          f"model version {answer['model_version']}")
    return 0


def _model_uri(value: str) -> str:
    return f"models:/{REGISTERED_MODEL}/{value}" if value.isdigit() else value


def _cmd_exaggerate(args: argparse.Namespace) -> int:
    from lch.cellstore import CellStoreError, open_cells
    from lch.exaggerate import (
        REPORT_CELLS,
        exaggerate,
        exaggerate_stored_cells,
        pick_cells,
        write_report,
    )
    from lch.paths import cohort_dir
    from lch.registry import load_lch_model
    from lch.trends import spearman_table

    if not args.cohort and not args.crop:
        print("error: give --cohort (cells of a stored cohort) or --crop FILE", file=sys.stderr)
        return 2
    try:
        model = load_lch_model(_model_uri(args.model))
        if args.cohort:
            table, crops = open_cells(cohort_dir(args.cohort))
            n = REPORT_CELLS if args.cells is None else args.cells
            indices = np.array(args.cell) if args.cell else pick_cells(table, n, args.seed)
            result = exaggerate_stored_cells(model, table, crops, indices, args.sigmas,
                                             method=args.method)
        else:
            names = [c.name for c in args.crop]
            result = exaggerate(model, [str(c) for c in args.crop], args.sigmas, cells=names,
                                method=args.method)
    except (CellStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_report(result, args.out)
    print(spearman_table(result.table).to_string(index=False, float_format="%.3f"))
    print(f"montage: {paths['montage']}\nmorphology vs sigma: {paths['table']}")
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _segmentation_kwargs(args: argparse.Namespace) -> dict:
    return {"crop_size": args.crop_size, "segmenter": args.segmenter,
            "field_of_view_um": args.field_of_view_um, "min_track_frames": args.min_track_frames}


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _segmentation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-track-frames", type=_at_least_one, default=MIN_TRACK_FRAMES,
        help="tracks seen in fewer frames are counted and flagged short_track in cells.parquet "
             "(default %(default)s)")
    parser.add_argument(
        "--field-of-view-um", type=_positive, default=DEFAULT_FIELD_OF_VIEW_UM,
        help="what each crop shows, in µm, resampled to --crop-size px (default %(default)s: "
             "the paper's 256 px at 0.325 µm)")
    parser.add_argument(
        "--segmenter", choices=SEGMENTERS, default=DEFAULT_SEGMENTER,
        help="who outlines the cells of movies without their own `labels` (default "
             "%(default)s; cellpose needs `pip install -e .[cellpose]` and its weights in "
             "$CELLPOSE_LOCAL_MODELS_PATH, never downloaded)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lch",
        description="Live-cell histology on Ray, MLflow and Zarr (see the repository's "
        "ARCHITECTURE.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic cohort (TIFF movies + cohort.yaml)")
    p.add_argument("out_dir", type=Path)
    synth = _defaults(make_cohort)
    p.add_argument("--name", default=synth["name"], help="cohort name (default: %(default)s)")
    p.add_argument("--patients", type=int, default=synth["patients"],
                   help="patients (cell lines), high and low alternating (default: %(default)s)")
    p.add_argument("--movies-per-patient", type=int, default=synth["movies_per_patient"],
                   help="(default: %(default)s)")
    p.add_argument("--frames", type=int, default=synth["frames"], help="(default: %(default)s)")
    p.add_argument("--size", type=int, nargs=2, default=synth["size"], metavar=("Y", "X"),
                   help="frame size in px (default: %(default)s)")
    p.add_argument("--seed", type=int, default=synth["seed"], help="(default: %(default)s)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "ingest", help="ingest a cohort: its movies into OME-Zarr, or its folder of crops (Ray)"
    )
    p.add_argument("manifest", type=Path, help="cohort.yaml")
    p.add_argument(
        "--address",
        help="Ray dashboard address (http://host:8265): submit as a Ray Job to that cluster",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-segment", action="store_true", help="stage A only (no cells/crops)")
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="crop side in px")
    p.add_argument("--max-frame-pixels", type=int, default=DEFAULT_MAX_FRAME_PIXELS,
                   help="refuse movies whose frames (height x width) exceed this, judged from "
                        "the file's header (default %(default)s = 16384 x 16384)")
    _segmentation_options(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("segment", help="segment a cohort's stored movies into cells and crops")
    p.add_argument("cohort")
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="crop side in px")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _segmentation_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("train", help="train the AAE on cohorts (Ray Train) and register it")
    p.add_argument("--cohort", action="append", required=True, help="cohort name (repeatable)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default 2)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--epochs", type=int, help="default 30")
    p.add_argument("--batch-size", type=int, help="mini-batch per worker (default 50)")
    p.add_argument("--latent-dim", type=int, help="default 56")
    p.add_argument("--width", type=float, help="multiplier on the paper's channels (0.125)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4)")
    p.add_argument("--seed", type=int, help="split, weights and population draws (default 0)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="score a stored cohort's cells and call each patient "
                       "(Ray Data, logged to MLflow)")
    p.add_argument("--cohort", required=True)
    p.add_argument("--model", default=model_uri(),
                   help=f"a version number, models:/{REGISTERED_MODEL}/VERSION or "
                        f"models:/{REGISTERED_MODEL}@ALIAS (default %(default)s)")
    p.add_argument("--out", help="where to write the per-cell table (default "
                   "cohorts/<cohort>/predictions/<version>.parquet under LCH_HOME)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--gpu", action="store_true", help="encode on one GPU")
    p.add_argument("--force", action="store_true", help="compute again if already stored")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("models",
                       help=f"list registered versions of {REGISTERED_MODEL} with aliases")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("promote", help="point an alias at a model version")
    p.add_argument("version")
    p.add_argument("--alias", default=CHAMPION_ALIAS, help="(default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="promote even if its cross-validated population accuracy is lower")
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("serve", help="serve classification and exaggeration over HTTP")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-alias", default=CHAMPION_ALIAS, help="(default: %(default)s)")
    p.add_argument("--poll-interval", type=float, default=10.0,
                   help="seconds between checks for a newly promoted version")
    p.add_argument("--public-docs", action="store_true",
                   help="serve /docs and /openapi.json without $LCH_API_TOKEN (default: with a "
                        "token set, they need it like every route but /healthz)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("classify", help="classify a TIFF movie/frame through the Serve endpoint")
    p.add_argument("file", type=Path)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="bearer token (default $LCH_API_TOKEN)")
    p.add_argument("--pixel-size-um", type=float,
                   help="the movie's pixel size (default on the server: 0.325, the paper's)")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("exaggerate", help="decode cells pushed along the discriminant direction")
    p.add_argument("--model", default=model_uri(),
                   help="a models:/ URI or a version number (default %(default)s)")
    p.add_argument("--cohort", help="take cells from this stored cohort")
    p.add_argument("--cells", type=int,
                   help="how many cells, half high, half low (default: as many as the report "
                        "logged with every training run)")
    p.add_argument("--cell", type=int, action="append", help="a cell's crop_index (repeatable)")
    p.add_argument("--crop", type=Path, action="append", help="a PNG/TIFF crop (repeatable)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[-4, -3, -2, -1, 0, 1, 2, 3, 4])
    p.add_argument("--method", default="linear",
                   help="linear: along the discriminant direction (the paper's); latent-shift: "
                        "along the gradient of the re-encoded image's logit (Cohen et al. 2021), "
                        "scaled to the same logit steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for the montage and tables")
    p.set_defaults(func=_cmd_exaggerate)

    p = sub.add_parser("demo", help="run the whole loop on a generated synthetic cohort")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def _setup_error(exc: BaseException) -> bool:
    """An unusable data root, tracking store or Ray token, a segmenter without its package or
    weights, or a cohort another run is writing: the user's environment, not a bug."""
    from lch.cohort_lock import CohortLocked
    from lch.labels import SegmenterUnavailable
    from lch.paths import StorageError
    from lch.pipelines.runtime import RaySecurityError
    from lch.registry import TrackingConfigError

    return isinstance(exc, StorageError | TrackingConfigError | RaySecurityError | CohortLocked
                      | SegmenterUnavailable)


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if not _setup_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
