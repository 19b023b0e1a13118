"""`lch demo`: the whole loop on a generated synthetic cohort, on this machine.

synthesise → ingest (OME-Zarr) → segment (Ray Data) → train (Ray Train + MLflow) → promote →
exaggerate → serve (Ray Serve) and query both routes through the Python client → shut down.
The synthetic high-metastatic lines carry planted arm-like protrusions and brighter halos: the
printed held-out metrics and exaggeration trends say whether the pipeline found them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lch.cellstore import open_cells
from lch.exaggerate import exaggerate_stored_cells
from lch.exaggeration_report import REPORT_CELLS, pick_cells, write_report
from lch.mlflow_store import tracking_uri
from lch.model_names import version_uri
from lch.paths import cohort_dir, lch_home
from lch.pipelines.runtime import free_port, keep_serve_logs_in_files
from lch.promotion import PromotionRefused, promote
from lch.registry import load_lch_model
from lch.synth import make_cohort
from lch.trends import spearman_table

COHORT = "demo"
STEPS = 6


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/{STEPS}] {text}", flush=True)


def _exaggeration_report(version: str, out: Path) -> Path:
    """Exaggerate :data:`REPORT_CELLS` cells (half high, half low) with ``version``.

    The trends are printed.
    """
    model = load_lch_model(version_uri(version))
    table, crops = open_cells(cohort_dir(COHORT))
    result = exaggerate_stored_cells(model, table, crops, pick_cells(table, REPORT_CELLS, seed=0))
    paths = write_report(result, out)
    print("Spearman rho between the shift s (SDs along the discriminant direction) and what "
          "the decoded cells show:")
    print(spearman_table(result.table).to_string(index=False, float_format="%.3f"))
    return paths["montage"]


def _query_serve(manifest: Path) -> None:
    """Start the Serve application, classify one movie per class and exaggerate one cell."""
    from ray import serve

    from lch.serving.app import build_app
    from lch.serving.client import LCHClient

    keep_serve_logs_in_files()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(), name="lch", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        with LCHClient(url) as client:
            print(f"serving {client.model()['name']} version {client.model()['version']} at {url}")
            movies = yaml.safe_load(manifest.read_text())["movies"]
            for label in ("high", "low"):
                movie = next(m for m in movies if m["label"] == label)
                answer = client.classify(manifest.parent / movie["path"],
                                         pixel_size_um=movie.get("pixel_size_um"))
                pop = answer["population"]
                print(f"  POST /v1/classify {movie['id']} (truly {label}): called {pop['call']}, "
                      f"mean P(high) {pop['p_high']:.3f} over {pop['n_cells']} cells")
            _, crops = open_cells(cohort_dir(COHORT))
            steps = client.exaggerate(crops[0], [-4, -2, 0, 2, 4])["steps"]
            shown = ", ".join(f"s={s['sigma']:+.0f}: {s['p_high']:.2f}" for s in steps)
            print(f"  POST /v1/exaggerate cell 0: P(high) {shown}")
    finally:
        serve.shutdown()


def run_demo(seed: int = 0) -> int:
    """Run every step; return the exit status."""
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort
    from lch.pipelines.train import TrainSettings, train

    home = lch_home()
    source = home / "demo" / "synth-cohort"
    _step(1, f"generating a synthetic cohort in {source}")
    # Eight lines, so that each line's call comes from a classifier fit on seven; six short
    # movies each give about 28 tracked cells per line (tracks need only 5 frames).
    manifest = make_cohort(source, name=COHORT, patients=8, movies_per_patient=6, frames=10,
                           seed=seed)
    _step(2, "ingesting it: movies → OME-Zarr (Ray tasks)")
    ingest = convert_cohort(manifest, home=home)
    print(ingest.format(), flush=True)
    if ingest.failed:
        return 1
    _step(3, "segmenting cells: Ray Data → cells.parquet + crops.zarr")
    print(segment_cohort(COHORT, home=home).format(), flush=True)
    _step(4, "training the adversarial autoencoder (Ray Train, tracked in MLflow)")
    trained = train(TrainSettings(cohorts=(COHORT,), seed=seed), progress=True)
    print(trained.format(), flush=True)
    try:
        print(promote(trained.model_version))
    except PromotionRefused as exc:
        print(f"not promoted: {exc}")
    _step(5, "exaggerating cells along the discriminant direction")
    montage = _exaggeration_report(trained.model_version, home / "demo" / "report")
    _step(6, "serving the champion over HTTP (Ray Serve) and querying it")
    _query_serve(manifest)
    ev = trained.evaluation
    print(f"\ndone. held-out ROC AUC: cell-level {ev.heldout_cell_auc:.3f}, frame-level "
          f"{ev.heldout_frame_auc:.3f}; cross-validated population of 20 distinct cells: "
          f"accuracy {ev.population_at(20):.3f} [{ev.population_at(20, 'ci_low'):.3f}, "
          f"{ev.population_at(20, 'ci_high'):.3f}], ROC AUC {ev.population_at(20, 'auc'):.3f}")
    print(f"report image: {montage}")
    print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0
