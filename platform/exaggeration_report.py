"""An exaggeration shown and kept, and which cells of a cohort a report shows.

It is shown as the montage of decoded images, and kept as a report folder with the montage,
the morphology table, the Spearman trends, the trend figure and, where real labelled cells are
at hand, the strongest trends tested on them (:func:`real_cell_hypotheses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from lch.classify import HIGH, LOW, binary_labels
from lch.evaluation import cell_index, first_of_each
from lch.exaggerate import (
    METHOD_TITLES,
    Exaggeration,
    exaggerate,
    measure_real_cells,
    measure_reconstructions,
)
from lch.trends import plot_trends, real_cell_check, spearman_table, trend_report

# Cells in a cohort report (half high, half low): with 32, the pooled rho of a trend varies
# little from one random draw of cells to the next.
REPORT_CELLS = 32
# Real cells measured beside a report, for the trends' bounds and the hypotheses' test.
REAL_CELLS = 256

_TILE_SCALE = 2
_GAP = 2
_TITLE = 14
_HEADER = 2 * _TITLE  # the method's title, then each column's s
_CAPTION = 12
_MIN_ROW_LABEL = 64


_BEYOND = (255, 140, 0)  # the frame of a tile past the training cells' natural range


def _probability_colour(p: float) -> tuple[int, int, int]:
    """Blue (P = 0, low) through grey to red (P = 1, high): the caption strip's colour bar."""
    p = min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.5
    low, high, mid = np.array([40, 90, 200]), np.array([200, 50, 40]), np.array([120, 120, 120])
    colour = mid + (high - mid) * (2 * p - 1) if p >= 0.5 else mid + (low - mid) * (1 - 2 * p)
    return tuple(int(c) for c in colour)


def _tile(image: np.ndarray, scale: int) -> Image.Image:
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    tile = Image.fromarray(pixels, mode="L")
    return tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)


def montage(result: Exaggeration, *, scale: int = _TILE_SCALE) -> Image.Image:
    """Draw a grid of the decoded images: rows = cells, columns = s.

    The first line names the method (:data:`METHOD_TITLES`); the header above each column gives
    its ``s``; the strip under each tile gives that image's
    P(high) (of the shifted code), coloured from blue (0, low) through grey to red (1, high).
    The row's cell id is on the left. Tiles whose code lies beyond anything the training cells
    reach along the direction (:attr:`Exaggeration.beyond_range`) are framed in orange, and
    "past range" in orange above the ids says so: those images are extrapolations.

    Parameters
    ----------
    result : Exaggeration
    scale : int
        Integer magnification of each decoded image (nearest neighbour).

    Returns
    -------
    PIL.Image.Image
        RGB image of width ``label + K * (S * scale + gap)`` (the label column fits the longest
        cell id; wider if the title needs it) and height
        ``header + C * (S * scale + caption + gap)``.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    n_cells, n_sigmas, side = result.images.shape[:3]
    tile = side * scale
    font = ImageFont.load_default()
    longest = max((font.getlength(cell) for cell in result.cells), default=0.0)
    label = max(_MIN_ROW_LABEL, math.ceil(longest) + 6)
    title = METHOD_TITLES[result.method]
    width = max(label + n_sigmas * (tile + _GAP), math.ceil(font.getlength(title)) + 4)
    height = _HEADER + n_cells * (tile + _CAPTION + _GAP)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    for j, s in enumerate(result.sigmas):
        x = label + j * (tile + _GAP)
        draw.text((x + 2, _TITLE + 1), f"s={s:+g}", fill=(0, 0, 0), font=font)
    if result.beyond_range is not None and result.beyond_range.any():
        draw.text((2, _TITLE + 1), "past range", fill=_BEYOND, font=font)  # the frames' legend
    for i, cell in enumerate(result.cells):
        y = _HEADER + i * (tile + _CAPTION + _GAP)
        draw.text((2, y + tile // 2 - 5), cell, fill=(0, 0, 0), font=font)
        for j in range(n_sigmas):
            x = label + j * (tile + _GAP)
            canvas.paste(_tile(result.images[i, j], scale).convert("RGB"), (x, y))
            if result.beyond_range is not None and result.beyond_range[i, j]:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=_BEYOND, width=2)
            p = float(result.probability[i, j])
            draw.rectangle(
                (x, y + tile, x + tile - 1, y + tile + _CAPTION - 1), fill=_probability_colour(p)
            )
            draw.text((x + 2, y + tile), f"P={p:.2f}", fill=(255, 255, 255), font=font)
    return canvas


def save_montage(result: Exaggeration, path: str | Path, *, scale: int = _TILE_SCALE) -> Path:
    """Write :func:`montage` as a PNG (parent folders created) and return its path."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"montage path {str(out)!r} must end in .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    montage(result, scale=scale).save(out, format="PNG")
    return out


def pick_cells(
    table: pd.DataFrame, n: int, seed: int = 0, *, column: str = "crop_index"
) -> np.ndarray:
    """Draw ``n`` rows at random; return their ``column`` values (default: crop indices).

    Half come from "high" and half from "low" lines where both exist (deterministic for
    ``seed``).
    """
    rng = np.random.default_rng(seed)
    labels = binary_labels(table["label"].to_numpy())
    groups = [np.flatnonzero(labels == c) for c in (LOW, HIGH)]
    groups = [g for g in groups if len(g)] or [np.arange(len(table))]
    share = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    picked = [rng.choice(g, size=min(k, len(g)), replace=False) for g, k in zip(groups, share,
                                                                                strict=True)]
    rows = np.sort(np.concatenate(picked))
    return table[column].to_numpy()[rows]


def pick_rows(table: pd.DataFrame, where: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Draw ``n`` of the rows where ``where`` holds, as :func:`pick_cells` does.

    Returns their positions in ``table`` (sorted), e.g. a training run's held-out cells.
    """
    positions = np.flatnonzero(where)
    return pick_cells(table.iloc[positions].assign(position=positions), n, seed,
                      column="position")


def write_report(result: Exaggeration, out_dir: str | Path,
                 hypotheses: pd.DataFrame | None = None,
                 bounds: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write the report to ``out_dir``; return the files' paths by kind.

    The files are the montage (PNG), the morphology table and the Spearman trends (CSV), the
    trend figure (PNG, :func:`lch.trends.plot_trends`) and, when given, the
    :func:`real_cell_hypotheses` table and the :func:`lch.trends.trend_report` (CSV).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "montage": save_montage(result, out / "exaggeration_montage.png"),
        "table": out / "exaggeration_morphology.csv",
        "trends": out / "exaggeration_spearman.csv",
        "figure": out / "exaggeration_trends.png",
    }
    result.table.to_csv(paths["table"], index=False)
    spearman_table(result.table).to_csv(paths["trends"], index=False)
    plot_trends(result.table).savefig(paths["figure"], dpi=120)
    if hypotheses is not None:
        paths["hypotheses"] = out / "exaggeration_hypotheses.csv"
        hypotheses.to_csv(paths["hypotheses"], index=False)
    if bounds is not None:
        paths["bounds"] = out / "exaggeration_bounds.csv"
        bounds.to_csv(paths["bounds"], index=False)
    return paths


def real_cell_bounds(model: Any, result: Exaggeration,
                     crops: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure real crops and their reconstructions; set ``result``'s trends beside them.

    Returns
    -------
    features : pandas.DataFrame
        The crops measured as the decoded images are (:func:`lch.exaggerate.measure_real_cells`).
    bounds : pandas.DataFrame
        :func:`lch.trends.trend_report` of ``result``: each trend, the bound the crops set and
        the decoder's fidelity on them.
    """
    features, scores = measure_real_cells(model, crops)
    bounds = trend_report(result.table, features, scores, result.sigmas,
                          reconstructed=measure_reconstructions(model, crops))
    return features, bounds


def real_cell_hypotheses(result: Exaggeration, cells: pd.DataFrame, features: pd.DataFrame,
                         seed: int = 0) -> pd.DataFrame:
    """Test ``result``'s strongest trends on real cells (:func:`lch.trends.real_cell_check`).

    Parameters
    ----------
    result : lch.exaggerate.Exaggeration
        The exaggeration.
    cells : pandas.DataFrame
        Cell-table rows of the real crops (``label``, ``track_id`` and ``store`` or
        ``movie``): frames of one tracked cell are averaged into one cell.
    features : pandas.DataFrame
        Those crops measured as the decoded images are, one row per crop in the rows' order
        (:func:`lch.exaggerate.measure_real_cells`).
    seed : int
        Seed of the resampling.
    """
    cell = cell_index(cells, by=("store" if "store" in cells else "movie", "track_id"))
    per_cell = features.groupby(cell, sort=True).mean(numeric_only=True)
    labels = first_of_each(cells["label"].to_numpy(), cell)
    return real_cell_check(result.table, per_cell, labels, seed=seed)


@dataclass
class HeldOutReport:
    """An exaggeration of held-out cells with the real cells that bound its trends.

    ``real_crops`` are the real cells' crops, ``features`` those crops measured
    (:func:`lch.exaggerate.measure_real_cells`), ``bounds`` the :func:`lch.trends.trend_report`
    and ``hypotheses`` the :func:`real_cell_hypotheses`.
    """

    result: Exaggeration
    real_crops: np.ndarray
    features: pd.DataFrame
    bounds: pd.DataFrame
    hypotheses: pd.DataFrame


def held_out_report(model: Any, table: pd.DataFrame, where: np.ndarray,
                    read_rows: Callable[[np.ndarray], np.ndarray], *,
                    report_cells: int = REPORT_CELLS, seed: int = 0) -> HeldOutReport:
    """Exaggerate ``report_cells`` of the cells where ``where`` holds, as a training run does.

    Half high, half low (:func:`pick_rows`); their trends are set beside :data:`REAL_CELLS`
    real cells drawn from the same rows (:func:`real_cell_bounds`), on which the strongest
    trends are tested (:func:`real_cell_hypotheses`).

    Parameters
    ----------
    model : lch.model.LCHModel
        With its classifier set.
    table : pandas.DataFrame
        The cell table (``patient``, ``label``, ``track_id`` and ``store`` or ``movie``).
    where : numpy.ndarray of bool
        Which rows may be drawn, e.g. a training run's held-out patients' cells.
    read_rows : callable
        Table positions (n,) to their crops (n, S, S).
    report_cells : int
        Cells exaggerated.
    seed : int
        Seed of the draws and the resampling.
    """
    rows = pick_rows(table, where, report_cells, seed)
    ids = [f"{table['patient'].iloc[r]} cell {r}" for r in rows]
    result = exaggerate(model, read_rows(rows), cells=ids)
    real = pick_rows(table, where, REAL_CELLS, seed)
    real_crops = read_rows(real)
    features, bounds = real_cell_bounds(model, result, real_crops)
    hypotheses = real_cell_hypotheses(result, table.iloc[real], features, seed)
    return HeldOutReport(result, real_crops, features, bounds, hypotheses)
