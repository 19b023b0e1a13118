"""The real crops of tests/data/real as one-frame movies through `lch ingest`: every centre cell
becomes one row of cells.parquet with one crop."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lch.cellstore import open_cells
from lch.crops import DEFAULT_CROP_SIZE
from lch.omezarr import open_labels
from lch.paths import cohort_dir, movies_dir
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.segment import segment_cohort
from lch.segmentation_scores import CENTRE_LABEL, centre_cell_score

from movies import write_manifest, write_tiff
from real_cells import PIXEL_SIZE_UM, real_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_cohort(tmp_path_factory):
    """All 62 real crops as one-frame uint8 TIFF movies, one patient per cell line."""
    folder = tmp_path_factory.mktemp("real")
    images, movies = real_images(), []
    for i, (name, image, _) in enumerate(images):
        write_tiff(folder / "raw" / f"m{i:02d}.tif", image[None])
        line = name.split("_")[1]
        movies.append({"id": f"m{i:02d}", "path": f"raw/m{i:02d}.tif", "patient": line,
                       "label": "unknown", "pixel_size_um": PIXEL_SIZE_UM})
    return write_manifest(folder, "real", movies), images


def _centre_object(labels: np.ndarray, reference: np.ndarray) -> int:
    """The stored object covering most of the reference centre cell (0: none)."""
    under = labels[(reference == CENTRE_LABEL) & (labels > 0)]
    return int(np.bincount(under).argmax()) if under.size else 0


def test_every_real_centre_cell_gets_one_row_and_one_crop(ray_session, lch_home, real_cohort):
    manifest, images = real_cohort
    landed = convert_cohort(manifest, progress=False)
    assert not landed.failed and landed.frames == len(images)
    summary = segment_cohort("real", progress=False)
    assert not summary.movies_failed and summary.frames == len(images)
    table, crops = open_cells(cohort_dir("real", lch_home))
    assert crops.shape == (len(table), DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE)
    outcome = {}
    for i, (name, _, reference) in enumerate(images):
        if reference is None:
            continue
        movie = f"m{i:02d}"
        labels = open_labels(movies_dir("real", lch_home) / f"{movie}.ome.zarr")[0, 0]
        status = centre_cell_score(labels, reference)["status"]
        rows = table[(table["movie"] == movie) & (table["cell_id"] == _centre_object(labels,
                                                                                   reference))]
        edge = np.concatenate([reference[0], reference[-1], reference[:, 0], reference[:, -1]])
        if status == "one" and len(rows) == 1:
            outcome[name] = "one row"
            deviation = np.abs(np.asarray(crops[int(rows["crop_index"].iloc[0])]) - 0.5)
            rim = np.concatenate([deviation[:8].ravel(), deviation[-8:].ravel()])
            assert deviation[26:38, 26:38].mean() > 2 * rim.mean(), name  # the cell, centred
        elif status == "one" and summary.dropped_per_movie.get(movie, {}).get("border"):
            # A spread cell reaching past its 83 µm crop touches this one-frame movie's edge.
            assert (edge == CENTRE_LABEL).any(), name
            outcome[name] = "border"
        else:
            outcome[name] = status
    counts = Counter(outcome.values())
    assert len(outcome) == 56 and counts["one row"] + counts["border"] >= 53, counts
    assert counts["one row"] >= 49, counts
    assert table["crop_index"].tolist() == list(range(len(table)))
