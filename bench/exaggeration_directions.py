"""Benchmark: does the demo model's exaggeration fall short by its direction or by its decoder?

Run: ``.venv/bin/python bench/exaggeration_directions.py DIR [DIR ...]`` on data roots that
``bench/demo_trends.py --keep ROOT`` kept (one per seed: ``ROOT/seed0`` ...); about a minute each.

The data's bound (:func:`lch.trends.trend_bound`) is the trend a faithful decoder shows when a
code moves along the codes' own mean given the score: the classifier's activation pattern,
``Cov(z, score) / SD(score)`` per SD of score (Haufe et al., NeuroImage 87, 2014). The paper's
linear method moves along the classifier's weight instead, one SD of the projections at a time;
the two part where the codes are correlated. Both steps move the classifier's logit alike. This
prints, per feature, the trend along each beside the bound and the decoder's fidelity: a feature
short of its bound along the pattern as well is short because of the decoder.

Last, how sharp the decoder would have to draw: the fidelity of each feature measured on the real
crops blurred by a Gaussian of 0.5-3 µm, and the blur the decoder's own fidelity matches
(:func:`decoder_scale.blur_fidelity`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from decoder_scale import blur_fidelity
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.exaggerate import (
    SHIFTS,
    encode_crops,
    exaggerate_codes,
    measure_real_cells,
    measure_reconstructions,
)
from lch.exaggeration_report import REAL_CELLS, REPORT_CELLS, pick_rows
from lch.model_names import version_uri
from lch.registry import load_lch_model
from lch.trends import trend_report


def pattern_step(model: torch.nn.Module, codes: np.ndarray) -> np.ndarray:
    """One SD of score along the activation pattern of the model's classifier, (D,)."""
    z = np.asarray(codes, dtype=np.float64)
    projections = z @ model.direction.double().cpu().numpy()
    centred = projections - projections.mean()
    return (z - z.mean(0)).T @ centred / len(z) / centred.std()


def pattern_shifts(step: np.ndarray):
    """A shift for :data:`lch.exaggerate.SHIFTS`: each code moves by ``s * step``, (C, K, D)."""
    along = torch.as_tensor(step, dtype=torch.float32)

    def shifts(model: torch.nn.Module, codes: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        return codes[:, None, :] + sigmas[None, :, None] * along.to(codes.device)

    return shifts


def compare(home: Path) -> None:
    """Print the linear method's and the pattern's trends for the model kept under ``home``."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, filter_string="tags.`lch.step` = 'train'")[0]
    held_out = run.data.params["test_patients"].split(",")
    seed = int(run.data.params["seed"])
    model = load_lch_model(version_uri("1"), tracking_uri=uri)
    model.eval()
    table, crops = open_cells(home / "cohorts" / "demo")
    test = table["patient"].isin(held_out).to_numpy()
    step = pattern_step(model, encode_crops(model, np.asarray(crops.oindex[np.flatnonzero(~test)])))
    linear = (model.direction * model.sigma).double().numpy()
    codes = encode_crops(model, np.asarray(crops.oindex[pick_rows(table, test, REPORT_CELLS,
                                                                  seed)]))
    real = np.asarray(crops.oindex[pick_rows(table, test, REAL_CELLS, seed)])
    features, scores = measure_real_cells(model, real)
    reconstructed = measure_reconstructions(model, real)
    cosine = step @ linear / np.linalg.norm(step) / np.linalg.norm(linear)
    print(f"{home}: cos(pattern, weight) {cosine:.3f}; step lengths: pattern "
          f"{np.linalg.norm(step):.3f}, weight {np.linalg.norm(linear):.3f}")
    with mock.patch.dict(SHIFTS, {"pattern": pattern_shifts(step)}):
        results = {"weight (linear method)": exaggerate_codes(model, codes),
                   "activation pattern": exaggerate_codes(model, codes, method="pattern")}
    for name, result in results.items():
        exaggerated = result.table
        report = trend_report(exaggerated, features, scores, result.sigmas,
                              reconstructed=reconstructed)
        p = exaggerated.groupby("sigma")["probability_reencoded"].median()
        print(f"  along the {name}: median P(high) of the re-encoded images by s "
              + " ".join(f"{v:.2f}" for v in p))
        print(report.to_string(index=False, float_format="%.3f"), flush=True)
    print("  fidelity (Spearman, crop vs its reconstruction or its Gaussian blur of sigma µm):")
    print(blur_fidelity(model, real, features, report).to_string(float_format="%.2f"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("homes", type=Path, nargs="+", help="data roots kept by demo_trends.py")
    for home in parser.parse_args().homes:
        compare(home)


if __name__ == "__main__":
    main()
