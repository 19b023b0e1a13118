"""Tracking: laptrack's links between LCH's own segmentations, against the generator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from lch.morphology import measure_cells
from lch.segmentation import segment_frame
from lch.synth import make_cohort, read_truth
from lch.tracking import link_tracks, max_step_px, track_lengths
from lch.tracking_scores import link_scores


def _matched_cells(frame: np.ndarray, truth: np.ndarray, px: float) -> pd.DataFrame:
    """LCH's cells of one frame with the true cell each one is (IoU >= 0.5; others left out)."""
    labels = segment_frame(frame, pixel_size_um=px)
    table = measure_cells(frame, labels, pixel_size_um=px)
    both = labels.astype(np.int64) * (truth.max() + 1) + truth
    pairs, overlap = np.unique(both[(labels > 0) & (truth > 0)], return_counts=True)
    size = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    true_size = dict(zip(*np.unique(truth, return_counts=True), strict=True))
    match = {}
    for pair, n in zip(pairs.tolist(), overlap.tolist(), strict=True):
        label, cell = divmod(pair, truth.max() + 1)
        if n / (size[label] + true_size[cell] - n) >= 0.5:
            match[label] = cell
    table["truth"] = table["label"].map(match)
    return table.dropna(subset=["truth"]).astype({"truth": int})


@pytest.fixture(scope="module")
def default_cohort(tmp_path_factory):
    """LCH's cells of every frame of the default synthetic cohort, with their true identities."""
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, seed=3, look="plain", size=(256, 256))
    truth = read_truth(root)
    px, interval = truth["pixel_size_um"], truth["frame_interval_s"]
    movies = []
    for movie in truth["movies"]:
        frames = tifffile.imread(root / "raw" / f"{movie['id']}.tif")
        masks = tifffile.imread(root / movie["labels_path"])
        cells = pd.concat([_matched_cells(f, m, px).assign(frame=t)
                           for t, (f, m) in enumerate(zip(frames, masks, strict=True))])
        movies.append(cells.reset_index(drop=True))
    return movies, px, interval


def test_links_follow_the_true_cells(default_cohort):
    movies, px, interval = default_cohort
    scores = []
    for cells in movies:
        track = link_tracks(cells, pixel_size_um=px, frame_interval_s=interval)
        scores.append(link_scores(cells["frame"], track, cells["truth"]))
    true = sum(s["true_links"] for s in scores)
    recovered = sum(s["recovered"] * s["true_links"] for s in scores) / true
    made = sum(s["made_links"] for s in scores)
    false = sum(s["false"] * s["made_links"] for s in scores) / made
    print(f"\n{len(movies)} movies, {true} true links: recovered {recovered:.3f}, "
          f"false {false:.3f} of {made} made")
    assert true >= 500
    assert recovered >= 0.95 and false <= 0.02


def test_a_speed_limit_too_low_links_nothing(default_cohort):
    movies, px, interval = default_cohort
    cells = movies[0]
    track = link_tracks(cells, pixel_size_um=px, frame_interval_s=interval,
                        max_speed_um_per_min=1e-3)
    assert len(np.unique(track)) == len(cells)


def test_link_scores_count_swaps_and_breaks():
    frame = np.array([0, 0, 1, 1, 2, 2])
    truth = np.array([1, 2, 1, 2, 1, 2])
    assert link_scores(frame, truth, truth) == {"recovered": 1.0, "false": 0.0,
                                                "true_links": 4, "made_links": 4}
    swapped = np.array([1, 2, 2, 1, 2, 1])  # the two cells swap between frames 0 and 1
    s = link_scores(frame, swapped, truth)
    assert s["recovered"] == 0.5 and s["false"] == 0.5
    broken = np.array([1, 2, 3, 4, 3, 4])  # both tracks end at frame 0
    s = link_scores(frame, broken, truth)
    assert s["recovered"] == 0.5 and s["false"] == 0.0


def test_a_missed_frame_is_bridged():
    rows = [(t, 100.0 + 2 * t, 50.0 + c * 80) for t in range(6) for c in range(3)
            if (t, c) != (3, 1)]
    cells = pd.DataFrame(rows, columns=["frame", "centroid_y", "centroid_x"])
    shuffled = cells.sample(frac=1.0, random_state=0)
    track = link_tracks(shuffled, pixel_size_um=0.65)
    assert len(np.unique(track)) == 3
    assert (pd.Series(track).groupby(shuffled["centroid_x"].to_numpy()).nunique() == 1).all()
    assert sorted(np.unique(track_lengths(track))) == [5, 6]
    no_gap = link_tracks(shuffled, pixel_size_um=0.65, max_gap_frames=0)
    assert len(np.unique(no_gap)) == 4


def test_the_step_limit_is_in_micrometres_per_minute():
    assert max_step_px(0.5, 120.0, 2.0) == pytest.approx(8.0)
    assert max_step_px(0.25, 120.0, 2.0) == pytest.approx(16.0)


@pytest.mark.parametrize("bad", [{"frame_interval_s": 0.0}, {"max_speed_um_per_min": -1.0},
                                 {"pixel_size_um": 0.0}])
def test_bad_scales_are_refused(bad):
    cells = pd.DataFrame({"frame": [0, 1], "centroid_y": [1.0, 2.0], "centroid_x": [1.0, 2.0]})
    with pytest.raises(ValueError):
        link_tracks(cells, **({"pixel_size_um": 0.65} | bad))


def test_a_table_without_positions_is_refused():
    with pytest.raises(ValueError, match="centroid_x"):
        link_tracks(pd.DataFrame({"frame": [0], "centroid_y": [1.0]}), pixel_size_um=0.65)
