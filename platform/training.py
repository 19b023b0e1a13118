"""What training needs besides Ray: cells, the split by patient, reading and encoding crops.

The cells are the cohorts'; the evaluation of a trained AAE is :mod:`lch.evaluation`.

The split comes first and decides everything else. Cells of held-out patients are never seen by
the AAE, not even unsupervised: the AAE's features would otherwise be fitted to exactly the
images the held-out score is computed on, which flatters it (the paper also held whole cell
lines out). Cells with an unknown label from other patients do train the AAE (it needs no
labels) but take no part in the classifier.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import zarr
from torch import nn

from lch.cellstore import CROPS_STORE, FIELD_OF_VIEW_KEY, CellStoreError, open_cells
from lch.classify import (
    binary_labels,
    patient_split,
)
from lch.model import aae_train_step, make_optimizers, refresh_batch_norm, unwrap
from lch.paths import Location, cohort_dir, join, lch_home
from lch.storage import filesystem, storage_options_from_env, zarr_store

# Cells read at once on the driver (refresh and encoding): bounded memory at any cohort size.
READ_ROWS = 1024
# A random sample this large pins down the batch-norm statistics; more only costs time.
REFRESH_CELLS = 4096


class TrainingInputError(ValueError):
    """Cohorts that cannot be trained on; the message names the cohort or field."""


@dataclass
class CellSet:
    """The cells of one or more cohorts, and where their crops are.

    ``table`` has the cohorts' cell rows concatenated plus ``store`` (index into ``stores``) and
    ``row`` (the crop's row in that store). ``stores`` are paths or URLs; ``storage_options``
    are the fsspec options that open URLs (they travel to Ray workers with the work items).
    """

    cohorts: tuple[str, ...]
    table: pd.DataFrame
    stores: tuple[str, ...]
    crop_size: int
    field_of_view_um: float
    storage_options: dict | None = None


@dataclass
class Split:
    """Boolean masks over a :class:`CellSet`'s rows, and the patients held out."""

    train: np.ndarray
    test: np.ndarray
    autoencoder: np.ndarray
    test_patients: tuple[str, ...]
    labels: np.ndarray


def _open_cohort(
    cohort: str, home: Location | None, options: dict
) -> tuple[pd.DataFrame, zarr.Array]:
    folder = cohort_dir(cohort, home)
    fs, path = filesystem(folder, options)
    if not fs.isdir(path):
        raise TrainingInputError(
            f"cohort {cohort!r}: not found ({folder} does not exist); ingest it first"
        )
    try:
        table, crops = open_cells(folder, options)
    except CellStoreError as exc:
        raise TrainingInputError(f"cohort {cohort!r}: {exc}") from None
    if table.empty:
        raise TrainingInputError(f"cohort {cohort!r}: no cells were segmented ({folder})")
    return table, crops


def load_cells(cohorts: Sequence[str], home: Location | None = None) -> CellSet:
    """Open the cell tables and crops of ``cohorts`` (under ``home``, default ``LCH_HOME``).

    Raises
    ------
    TrainingInputError
        No cohort given, a cohort missing or without segmentation outputs, or cohorts whose
        crops differ in size or field of view.
    """
    cohorts = tuple(dict.fromkeys(cohorts))  # once each, in the order given
    if not cohorts:
        raise TrainingInputError("no cohort given (--cohort NAME)")
    options = storage_options_from_env(home or lch_home())
    tables, stores, sizes, views = [], [], {}, {}
    for i, cohort in enumerate(cohorts):
        table, crops = _open_cohort(cohort, home, options)
        sizes[cohort] = crops.shape[1]
        views[cohort] = crops.attrs.get(FIELD_OF_VIEW_KEY)
        tables.append(table.assign(store=i, row=np.arange(len(table))))
        stores.append(str(join(cohort_dir(cohort, home), CROPS_STORE)))
    if len(set(sizes.values())) > 1:
        raise TrainingInputError(f"cohorts have different crop sizes: {sizes}")
    table = pd.concat(tables, ignore_index=True)
    return CellSet(cohorts, table, tuple(stores), next(iter(sizes.values())),
                   _one_field_of_view(views), options)


def _one_field_of_view(views: dict[str, float | None]) -> float:
    """Return the one field of view (µm) of the cohorts' crops: the model learns that scale."""
    old = sorted(c for c, v in views.items() if v is None)
    if old:
        raise TrainingInputError(
            f"cohorts {', '.join(old)}: crops cut before they had a field of view in µm; "
            "run `lch segment` on them again"
        )
    if len(set(views.values())) > 1:
        raise TrainingInputError(
            f"cohorts' crops show different fields of view (µm): {views}; segment them with one "
            "--field-of-view-um"
        )
    return float(next(iter(views.values())))


def split_by_patient(cells: CellSet, n_test_per_class: int = 1, seed: int = 0) -> Split:
    """Hold out ``n_test_per_class`` patients of each class (:func:`lch.classify.patient_split`).

    A patient id is taken to name the same patient in every cohort, so a patient is never on
    both sides even across cohorts.

    Raises
    ------
    TrainingInputError
        Unreadable labels, no labelled cells, one class only, or too few patients to hold some
        out; the message names the cohorts.
    """
    names = ", ".join(cells.cohorts)
    table = cells.table
    try:
        labels = binary_labels(table["label"])
        train, test = patient_split(
            table["patient"], labels, n_test_per_class=n_test_per_class, seed=seed
        )
    except ValueError as exc:
        raise TrainingInputError(f"cohort(s) {names}, field 'label': {exc}") from None
    held_out = sorted(set(table.loc[test, "patient"]))
    autoencoder = ~table["patient"].isin(held_out).to_numpy()
    return Split(train, test, autoencoder, tuple(held_out), labels)


def row_ranges(rows: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Cut sorted row indices into ``[start, stop)`` runs of at most ``max_rows`` consecutive rows.

    Runs also break at multiples of ``max_rows``, so a run never spans two storage chunks when
    ``max_rows`` divides the chunk length.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = (np.diff(rows) != 1) | (rows[1:] % max_rows == 0)
    starts = np.concatenate([[0], np.flatnonzero(breaks) + 1])
    stops = np.concatenate([starts[1:], [rows.size]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def crop_items(cells: CellSet, mask: np.ndarray, max_rows: int) -> list[dict]:
    """Work items ``{"store", "start", "stop"}`` covering the crops of the rows in ``mask``."""
    items = []
    selected = cells.table.loc[mask, ["store", "row"]]
    for store, group in selected.groupby("store", sort=True):
        path = cells.stores[int(store)]
        rows = np.sort(group["row"].to_numpy())
        items += [{"store": path, "start": a, "stop": b} for a, b in row_ranges(rows, max_rows)]
    return items


def read_rows(cells: CellSet, index: np.ndarray) -> np.ndarray:
    """Crops (n, S, S) float32 of the table rows ``index`` (positions into ``cells.table``)."""
    index = np.asarray(index, dtype=np.int64)
    out = np.empty((len(index), cells.crop_size, cells.crop_size), np.float32)
    stores = cells.table["store"].to_numpy()[index]
    rows = cells.table["row"].to_numpy()[index]
    for store in np.unique(stores):
        at = np.flatnonzero(stores == store)
        order = np.argsort(rows[at])
        location = cells.stores[int(store)]
        array = zarr.open_array(
            zarr_store(location, cells.storage_options, read_only=True), mode="r"
        )
        out[at[order]] = array.oindex[rows[at][order]]
    return out


def iter_crops(
    cells: CellSet, index: np.ndarray, batch_size: int, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Batches (B, 1, S, S) of the crops of table rows ``index``, in that order."""
    for start in range(0, len(index), READ_ROWS):
        block = torch.from_numpy(read_rows(cells, index[start : start + READ_ROWS]))
        for batch in block.unsqueeze(1).split(batch_size):
            yield batch.to(device)


def refresh_statistics(
    model: nn.Module, cells: CellSet, mask: np.ndarray, batch_size: int, seed: int = 0
) -> None:
    """:func:`lch.model.refresh_batch_norm` over randomly mixed batches of the ``mask`` cells.

    Mixed like the training batches: batches of one movie would underestimate the variances.
    A batch of one cell (a remainder) is dropped, batch norm cannot use it.
    """
    rng = np.random.default_rng(seed)
    index = np.flatnonzero(mask)
    index = rng.permutation(index)[:REFRESH_CELLS]
    device = next(unwrap(model).parameters()).device
    batches = (b for b in iter_crops(cells, index, batch_size, device) if len(b) > 1)
    refresh_batch_norm(model, batches)


@torch.no_grad()
def encode(model: nn.Module, cells: CellSet, index: np.ndarray, batch_size: int) -> np.ndarray:
    """Latent codes (n, D) float32 of the table rows ``index``, model in eval mode."""
    inner = unwrap(model).eval()
    device = next(inner.parameters()).device
    codes = [inner.encode(x).cpu() for x in iter_crops(cells, index, batch_size, device)]
    return torch.cat(codes).numpy() if codes else np.zeros((0, inner.config.latent_dim), np.float32)


def train_in_memory(
    model: nn.Module, crops: np.ndarray, epochs: int, batch_size: int, seed: int = 0
) -> list[dict[str, float]]:
    """Train an AAE in one process on crops held on its device, without Ray.

    What ``lch train``'s workers do, for a study or a benchmark that needs neither Ray nor
    MLflow: every epoch takes the crops in a new order (seeded) in full batches of
    ``batch_size`` (the crops a last full batch leaves over sit that epoch out), one
    :func:`lch.model.aae_train_step` each, with fresh optimizers.

    Parameters
    ----------
    model : lch.model.AAE
        Trained in place, on the device its parameters are on.
    crops : numpy.ndarray
        (N, S, S) in [0, 1], ``N >= batch_size``.
    epochs, batch_size : int
        Passes over the crops, and crops per step.
    seed : int
        Seed of the order.

    Returns
    -------
    list of dict
        One per epoch: the mean ``recon``, ``disc`` and ``gen`` losses of its steps, the
        ``samples`` it trained on and its ``seconds``.
    """
    if not 0 < batch_size <= len(crops):
        raise ValueError(f"batch_size must be in 1..{len(crops)} (the crops), got {batch_size}")
    device = next(model.parameters()).device
    optimizers = make_optimizers(model, unwrap(model).config)
    x = torch.as_tensor(np.asarray(crops, np.float32), device=device).unsqueeze(1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    history = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator).to(device)
        steps = [aae_train_step(model, optimizers, x[order[i : i + batch_size]])
                 for i in range(0, len(x) - batch_size + 1, batch_size)]
        history.append({loss: float(np.mean([s[loss] for s in steps])) for loss in steps[0]}
                       | {"samples": len(steps) * batch_size,
                          "seconds": time.perf_counter() - started})
    return history
