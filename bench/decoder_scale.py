"""Benchmark: does the AAE draw arms and halo when trained at the paper's scale (on a GPU)?

Run: ``python bench/decoder_scale.py ROOT [--cohort demo] [--device cuda] [--epochs 300]
[--width 1] [--latent-dim 56] [--batch-size 50] [--lr 2e-4] [--seed 0] [--runs 1]
[--out DIR]``

ROOT holds ``cohorts/<cohort>/cells.parquet`` and ``crops.zarr`` (a root that
``bench/demo_trends.py --keep`` kept, or ``LCH_HOME`` after ``make demo``; the movies are not
read). The AAE trains in one plain PyTorch process (:func:`lch.training.train_in_memory`), with
neither Ray nor MLflow, so it also runs on a GPU machine that has torch, scikit-image,
scikit-learn, pandas and pyarrow, given zarr's wheels (zarr, numcodecs, donfig, google-crc32c)
and the project installed with ``pip install --no-deps --no-build-isolation --target DIR .``.
Options left out are the paper's (:class:`lch.model.AAEConfig`: full width, lr 2e-4, batch 50),
not the CPU demo's.

Then it measures what every training run reports (:func:`lch.evaluation.evaluate`,
:func:`lch.exaggeration_report.held_out_report`): the held-out cell AUC; each feature's trend,
the data's bound, their ratio and the decoder's fidelity; the planted-over-control margin; and,
last, how sharp the decoder draws: each feature's fidelity on the real crops blurred by a
Gaussian of 0.5-3 µm beside the decoder's, and the blur the decoder's matches. The exaggeration
criterion (:func:`lch.trends.judge_trends`) asks a ratio of 0.85, which for the arms takes a
fidelity near 0.85: a decoder that blurs arms by about 1 µm or less. Training figures: samples/s
and, on CUDA, the GPU's mean utilisation (needs ``pynvml``). With ``--out`` the report folder
(montage, trend figure, tables) and the per-epoch losses are written there. With ``--runs N``
it trains N models on the same split, their weights and order seeded apart, and prints each
run's figures with their mean and SD: how much one training's trends are a draw.
"""

from __future__ import annotations

import argparse
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from lch.evaluation import evaluate
from lch.exaggerate import measure_real_cells
from lch.exaggeration_report import held_out_report, write_report
from lch.model import AAE, AAEConfig
from lch.training import load_cells, read_rows, split_by_patient, train_in_memory
from lch.trends import control_margin, judge_trends

BLURS_UM = (0.5, 1.0, 1.5, 2.0, 3.0)
UTILISATION_EVERY_S = 0.5


def blur_fidelity(model: torch.nn.Module, crops: np.ndarray, features: pd.DataFrame,
                  report: pd.DataFrame) -> pd.DataFrame:
    """Each report feature's fidelity on blurred crops beside the decoder's, and the blur (µm)
    whose fidelity the decoder's matches (``<`` / ``>`` outside :data:`BLURS_UM`)."""
    table = report.set_index("feature")[["fidelity"]].rename(columns={"fidelity": "decoder"})
    for sigma in BLURS_UM:
        px = sigma / model.config.crop_pixel_size_um
        blurred, _ = measure_real_cells(model, ndimage.gaussian_filter(crops, (0, px, px)))
        table[f"blur {sigma:g}"] = [spearmanr(features[f], blurred[f], nan_policy="omit")[0]
                                    for f in table.index]
    blur = table.drop(columns="decoder").to_numpy()
    matched = []
    # A noisy rise with more blur would unsort np.interp's abscissae: take the running minimum.
    for decoder, row in zip(table["decoder"], np.minimum.accumulate(blur, axis=1), strict=True):
        if decoder > row[0]:
            matched.append(f"< {BLURS_UM[0]:g}")
        elif decoder < row[-1]:
            matched.append(f"> {BLURS_UM[-1]:g}")
        else:
            matched.append(f"{np.interp(decoder, row[::-1], BLURS_UM[::-1]):.2f}")
    table["decoder draws like a blur of (µm)"] = matched
    return table


class Utilisation:
    """Mean GPU utilisation (%) while in the block, sampled by a thread; None off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(UTILISATION_EVERY_S):
            self.samples.append(torch.cuda.utilization(self.device))

    def __enter__(self) -> Utilisation:
        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except (ModuleNotFoundError, RuntimeError) as error:  # no pynvml, or no NVML
                print(f"GPU utilisation not sampled: {error}")
            else:
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="data root holding cohorts/<cohort>")
    parser.add_argument("--cohort", default="demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0,
                        help="split, classifier and report draws; weights and order of run r: "
                             "seed + r")
    parser.add_argument("--runs", type=int, default=1,
                        help="trainings of the same split, to see how much one run's figures vary")
    parser.add_argument("--out", type=Path, help="folder for the report and the losses")
    defaults = AAEConfig()
    parser.add_argument("--width", type=float, default=defaults.width)
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    return parser.parse_args()


def train_and_report(args: argparse.Namespace, config: AAEConfig, cells, split,
                     crops: np.ndarray, run: int):
    """Train one AAE (weights and order seeded by ``args.seed + run``) and report it as a
    training run does: return its evaluation, its held-out report and its epochs' losses."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed + run)
    aae = AAE(config).to(device)
    with Utilisation(device) as gpu:
        epochs = pd.DataFrame(train_in_memory(aae, crops, args.epochs, args.batch_size,
                                              args.seed + run))
    steady = epochs.iloc[1:] if len(epochs) > 1 else epochs  # the first epoch warms up
    print(f"run {run}: trained {epochs.seconds.sum():.0f} s, "
          f"{steady.samples.sum() / steady.seconds.sum():.0f} samples/s after the first epoch, "
          "GPU utilisation " + (f"{gpu.mean:.0f}%" if gpu.mean is not None else "n/a")
          + f"; last epoch's losses: recon {epochs.recon.iloc[-1]:.4f}, "
          f"disc {epochs.disc.iloc[-1]:.3f}, gen {epochs.gen.iloc[-1]:.3f}", flush=True)
    evaluation = evaluate(aae, cells, split, seed=args.seed)
    report = held_out_report(evaluation.model, cells.table, split.test,
                             partial(read_rows, cells), seed=args.seed)
    print(f"held-out cell AUC {evaluation.heldout_cell_auc:.3f}; population of 20 cells accuracy "
          f"{evaluation.population_at(20):.3f}")
    print(report.bounds.to_string(index=False, float_format="%.3f"))
    print(f"margin shown {control_margin(report.bounds):.3f}, allowed by the cells "
          f"{control_margin(report.bounds, 'bound'):.3f}")
    for fault in judge_trends(report.bounds) or ["criterion met"]:
        print("  " + fault)
    return evaluation, report, epochs


def summary_row(evaluation, report) -> dict[str, float]:
    """One run's figures: AUC, each feature's ratio and fidelity, the margin shown."""
    bounds = report.bounds.set_index("feature")
    return ({"cell AUC": evaluation.heldout_cell_auc}
            | {f"{f} {c}": bounds.loc[f, c] for f in bounds.index for c in ("ratio", "fidelity")}
            | {"margin": control_margin(report.bounds)})


def main() -> None:
    args = parse_args()
    cells = load_cells([args.cohort], args.root)
    split = split_by_patient(cells, seed=args.seed)
    crops = read_rows(cells, np.flatnonzero(split.autoencoder))
    config = AAEConfig(crop_size=cells.crop_size, latent_dim=args.latent_dim, width=args.width,
                       lr=args.lr, batch_size=args.batch_size,
                       field_of_view_um=cells.field_of_view_um)
    device = torch.device(args.device)
    print(f"{args.root} {args.cohort}: {len(crops)} training crops {cells.crop_size} px, "
          f"{args.epochs} epochs of batch {args.batch_size}, width {args.width}, latent "
          f"{args.latent_dim}, lr {args.lr}, on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
          flush=True)
    rows = []
    for run in range(args.runs):
        evaluation, report, epochs = train_and_report(args, config, cells, split, crops, run)
        rows.append(summary_row(evaluation, report))
        if run > 0:
            continue
        started = time.perf_counter()
        blur = blur_fidelity(evaluation.model, report.real_crops, report.features,
                             report.bounds)
        print("fidelity (Spearman, crop vs its reconstruction or its Gaussian blur of sigma µm):")
        print(blur.to_string(float_format="%.2f"))
        print(f"(blurred and measured in {time.perf_counter() - started:.0f} s)", flush=True)
        if args.out:
            write_report(report.result, args.out, report.hypotheses, report.bounds)
            epochs.to_csv(args.out / "epochs.csv", index_label="epoch")
            blur.to_csv(args.out / "blur.csv")
    if args.runs > 1:
        runs = pd.DataFrame(rows)
        print(f"{args.runs} trainings of the same split (weights and order seeded {args.seed}.."
              f"{args.seed + args.runs - 1}):")
        print(runs.to_string(float_format="%.2f"))
        print(runs.agg(["mean", "std"]).to_string(float_format="%.2f"))


if __name__ == "__main__":
    main()
