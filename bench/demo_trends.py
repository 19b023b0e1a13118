"""Benchmark: the demo model's exaggeration criterion and population accuracy over seeds.

Run: ``.venv/bin/python bench/demo_trends.py --seeds 0 1 2 [--keep DIR] [--random-directions 8]``
(about 6 minutes a seed on 2 cores).

One `lch demo` trains one small AAE on ~200 tracked cells, so its trends are one draw: this runs
``lch demo --seed S`` for each seed in a data root of its own and prints, per seed, the
cross-validated population accuracy (20 distinct cells) and each planted and control feature's
trend beside the data's bound and how faithfully the decoder reproduces it (the run's
``exaggeration_bounds.csv``, :func:`lch.trends.trend_report`), then what
:func:`lch.trends.judge_trends` finds short.

Beside them, the same report cells exaggerated along random directions of the model's latent
space: the median and 90th percentile of each feature's |rho| there is how much any direction
changes a decoded cell, the floor a control's trend along the discriminant is compared with.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.exaggerate import encode_crops, exaggerate
from lch.exaggeration_report import REPORT_CELLS, pick_rows
from lch.model_names import version_uri
from lch.registry import load_lch_model
from lch.trends import CONTROL_FEATURES, PLANTED_FEATURES, judge_trends, spearman_table


def _demo(seed: int, home: Path) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
    """Run ``lch demo --seed seed`` under ``home``; return its run's metrics, bounds and params."""
    lch = Path(sys.executable).with_name("lch")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LCH_HOME"] = str(home)
    log = home / "demo.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([str(lch), "demo", "--seed", str(seed)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"lch demo --seed {seed} failed ({done.returncode}): see {log}")
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, filter_string="tags.`lch.step` = 'train'")[0]
    bounds = client.download_artifacts(run.info.run_id, "exaggeration/exaggeration_bounds.csv",
                                       str(home))
    return run.data.metrics, pd.read_csv(bounds), run.data.params


def _random_floor(home: Path, held_out: list[str], seed: int, n: int) -> pd.DataFrame:
    """|rho| of each feature along ``n`` random latent directions, for the run's report cells."""
    model = load_lch_model(version_uri("1"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    table, crops = open_cells(home / "cohorts" / "demo")
    test = table["patient"].isin(held_out).to_numpy()
    cells = np.asarray(crops.oindex[pick_rows(table, test, REPORT_CELLS, seed)])
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(np.flatnonzero(~test), 600, replace=False))
    codes = encode_crops(model, np.asarray(crops.oindex[train]))
    features = [*PLANTED_FEATURES, *CONTROL_FEATURES]
    out = []
    for _ in range(n):
        model.set_classifier(rng.normal(size=codes.shape[1]), 0.0, codes)
        trends = spearman_table(exaggerate(model, cells).table, features)
        out.append(trends.set_index("feature")["rho"].abs())
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="keep each seed's data root under this folder")
    parser.add_argument("--random-directions", type=int, default=8,
                        help="random latent directions per seed for the |rho| floor (0: none)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="lch-demo-trends-"))
    rows, passed = [], 0
    for seed in args.seeds:
        home = root / f"seed{seed}"
        metrics, bounds, params = _demo(seed, home)
        faults = judge_trends(bounds)
        passed += not faults
        row = {"seed": seed, "population_k20": metrics["cv_population_accuracy_k20"],
               "heldout_cell_auc": metrics["heldout_cell_auc"]}
        for b in bounds.itertuples():
            row[f"{b.feature} rho"] = b.rho
            if b.role == "planted":
                row[f"{b.feature} ratio"] = b.ratio
                row[f"{b.feature} fidelity"] = b.fidelity
        rows.append(row)
        print(f"seed {seed}:", bounds.to_string(index=False, float_format="%.3f"), sep="\n")
        print("  criterion:", "met" if not faults else "; ".join(faults), flush=True)
        if args.random_directions:
            floor = _random_floor(home, params["test_patients"].split(","), seed,
                                  args.random_directions)
            print(f"  |rho| along {args.random_directions} random directions (median, 90th "
                  "percentile): " + ", ".join(
                      f"{f} {floor[f].median():.2f}, {floor[f].quantile(0.9):.2f}"
                      for f in floor.columns), flush=True)
            for f in CONTROL_FEATURES:
                row[f"{f} random median"] = floor[f].median()
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format="%.3f"))
    print(f"criterion met on {passed} of {len(args.seeds)} seeds; data roots under {root}")


if __name__ == "__main__":
    main()
