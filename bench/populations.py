"""Benchmark: population calls from frames (pseudo-replicated) against distinct tracked cells.

Run after ``lch demo`` (or any training run): ``.venv/bin/python bench/populations.py
[--cohort demo] [--version 1]`` with ``LCH_HOME`` set as for the run.

Before cells were tracks, a population of k "cells" was k rows of the cell table: k frames that
may all come from a few tracked cells, so its accuracy counted pseudo-replicates. This prints,
for the patients the version's run held out of the autoencoder, the accuracy of populations of
k frames (the old figure) beside populations of k distinct tracked cells, each by the mean code
of its frames (the new one), with the same served model, and the number of distinct cells the
k frames actually held.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.classify import POPULATION_KS, binary_labels, population_draws
from lch.evaluation import cell_index, cell_means, first_of_each
from lch.mlflow_store import use_tracking
from lch.paths import cohort_dir
from lch.registry import REGISTERED_MODEL, load_lch_model


def _distinct_cells(cells: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> float:
    """Mean number of distinct cells among k frames drawn from a line's frames."""
    order = rng.permuted(np.tile(np.arange(len(cells)), (draws, 1)), axis=1)[:, :k]
    return float(np.mean([len(set(cells[o])) for o in order]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", default="demo")
    parser.add_argument("--version", default="1")
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    use_tracking()
    version = MlflowClient().get_model_version(REGISTERED_MODEL, args.version)
    held_out = MlflowClient().get_run(version.run_id).data.params["test_patients"].split(",")
    model = load_lch_model(f"models:/{REGISTERED_MODEL}/{args.version}")
    table, crops = open_cells(cohort_dir(args.cohort))
    rows = np.flatnonzero(table["patient"].isin(held_out).to_numpy())
    table = table.iloc[rows].assign(store=0)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(np.asarray(crops.oindex[rows]))[:, None])
        p_frames = model.classify_latent(z).numpy()
        cell = cell_index(table)
        means = torch.from_numpy(cell_means(z.numpy(), cell)).float()
        p_cells = model.classify_latent(means).numpy()
    y = binary_labels(table["label"])
    lines = table["cell_line"].to_numpy()
    print(f"held-out lines {', '.join(held_out)}: {len(rows)} frames of {cell.max() + 1} "
          f"tracked cells; {args.draws} populations per line")
    print(f"{'k':>4} {'k frames':>9} {'distinct cells in them':>23} {'k distinct cells':>17}")
    rng = np.random.default_rng(0)
    for k in POPULATION_KS:
        frames = population_draws(p_frames, y, lines, k=k, n_draws=args.draws, rng=rng)
        cells = population_draws(p_cells, first_of_each(y, cell), first_of_each(lines, cell),
                                 k=k, n_draws=args.draws, rng=rng)
        distinct = np.mean([_distinct_cells(cell[lines == line], k, args.draws, rng)
                            for line in np.unique(lines)])
        print(f"{k:>4} {frames.accuracy():>9.3f} {distinct:>23.1f} {cells.accuracy():>17.3f}"
              + ("" if (cells.sizes >= k).all() else "  (some lines have fewer cells)"))


if __name__ == "__main__":
    main()
