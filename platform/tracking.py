"""Tracking: a movie's cells linked from frame to frame into tracks, with laptrack.

laptrack solves the linear assignment problem of Jaqaman et al. (2008), the method of TrackMate's
LAP tracker: frame-to-frame links and then gap closing over a missed frame are each one global
optimum, so two cells that pass near each other are not swapped the way a greedy nearest
neighbour swaps them. Cells neither divide nor merge here (no splitting or merging step).

The largest step a cell may take is a speed in µm/min, converted with the movie's pixel size and
frame interval, so the same setting serves any microscope.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from lch.pixel_size import check_pixel_size

# Melanoma cells in 2-D culture crawl at up to about 1 µm/min; the bound leaves room for that.
MAX_SPEED_UM_PER_MIN = 5.0
DEFAULT_FRAME_INTERVAL_S = 60.0
# A cell missed by the segmentation in one frame is bridged: a gap of one frame.
MAX_GAP_FRAMES = 1
MIN_TRACK_FRAMES = 5

POSITION = ["centroid_y", "centroid_x"]


def max_step_px(
    pixel_size_um: float, frame_interval_s: float, max_speed_um_per_min: float
) -> float:
    """Return the largest distance (px) a cell may move from one frame to the next."""
    px = check_pixel_size(pixel_size_um)
    if not (frame_interval_s > 0 and max_speed_um_per_min > 0):
        raise ValueError(
            f"frame interval {frame_interval_s!r} s and speed {max_speed_um_per_min!r} µm/min "
            "must be positive"
        )
    return max_speed_um_per_min * frame_interval_s / 60.0 / px


def link_tracks(
    cells: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float = DEFAULT_FRAME_INTERVAL_S,
    max_speed_um_per_min: float = MAX_SPEED_UM_PER_MIN,
    max_gap_frames: int = MAX_GAP_FRAMES,
) -> np.ndarray:
    """Link the cells of one movie into tracks.

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell per frame, with ``frame``, ``centroid_y`` and ``centroid_x`` (px).
    pixel_size_um, frame_interval_s : float
        The movie's pixel size and time between frames.
    max_speed_um_per_min : float
        Cells farther apart than this speed allows are never linked.
    max_gap_frames : int
        Frames a cell may be missing from and still continue its track.

    Returns
    -------
    numpy.ndarray of int64
        Each row's track, numbered 0..K-1 in order of first appearance.

    Raises
    ------
    ValueError
        If a column is missing or holds NaN, or a scale is not positive.
    """
    missing = [c for c in ["frame", *POSITION] if c not in cells.columns]
    if missing:
        raise ValueError(f"cell table lacks column(s) {missing}")
    if cells[["frame", *POSITION]].isna().any().any():
        raise ValueError("cell table has NaN in frame or centroid")
    if not len(cells):
        return np.zeros(0, np.int64)
    from laptrack import LapTrack  # seconds to import: not on the CLI's path to --help

    step = max_step_px(pixel_size_um, frame_interval_s, max_speed_um_per_min)
    tracker = LapTrack(
        cutoff=step**2,  # its default metric is the squared Euclidean distance
        gap_closing_cutoff=((max_gap_frames + 1) * step) ** 2 if max_gap_frames else False,
        gap_closing_max_frame_count=max_gap_frames + 1,
        splitting_cutoff=False,
        merging_cutoff=False,
    )
    points = pd.DataFrame({"frame": cells["frame"].to_numpy(np.int64),
                           "y": cells["centroid_y"].to_numpy(float),
                           "x": cells["centroid_x"].to_numpy(float),
                           "row": np.arange(len(cells))})
    tracked, _, _ = tracker.predict_dataframe(points, ["y", "x"], only_coordinate_cols=False)
    # laptrack returns the rows sorted by frame, with a new index.
    ids = tracked.sort_values("row")["track_id"].to_numpy()
    _, first = np.unique(ids, return_index=True)
    renumber = {ids[i]: k for k, i in enumerate(np.sort(first))}
    return np.array([renumber[i] for i in ids], np.int64)


def track_lengths(track_ids: np.ndarray) -> np.ndarray:
    """How many rows (frames) each row's track has."""
    _, inverse, counts = np.unique(track_ids, return_inverse=True, return_counts=True)
    return counts[inverse]


TRACK_COLUMNS = ["track_id", "track_frames", "short_track"]
"""What tracking adds to a cohort's cell table."""


def check_min_track_frames(min_track_frames: int) -> int:
    """``min_track_frames`` if it is a whole number of at least 1, else ValueError."""
    if isinstance(min_track_frames, bool) or int(min_track_frames) != min_track_frames \
            or min_track_frames < 1:
        raise ValueError(f"min_track_frames {min_track_frames!r} must be a whole number >= 1")
    return int(min_track_frames)


def _link_movie(job: tuple[pd.DataFrame, float, float]) -> np.ndarray:
    """:func:`link_tracks` of one movie's ``(cells, frame interval, max speed)``."""
    cells, frame_interval_s, max_speed = job
    return link_tracks(cells, pixel_size_um=float(cells["pixel_size_um"].iloc[0]),
                       frame_interval_s=frame_interval_s, max_speed_um_per_min=max_speed)


def track_cohort(
    cells: pd.DataFrame,
    frame_intervals_s: dict[str, float],
    *,
    min_track_frames: int = MIN_TRACK_FRAMES,
    max_speed_um_per_min: float = MAX_SPEED_UM_PER_MIN,
    map_movies: Callable = map,
) -> pd.DataFrame:
    """Track every movie of a cohort's cell table.

    Parameters
    ----------
    cells : pandas.DataFrame
        The cohort's cells (``movie``, ``frame``, ``pixel_size_um`` and the centroids).
    frame_intervals_s : dict
        Each movie's frame interval; a movie not in it gets :data:`DEFAULT_FRAME_INTERVAL_S`.
    min_track_frames : int
        Tracks seen in fewer frames are flagged ``short_track``.
    max_speed_um_per_min : float
        See :func:`link_tracks`.
    map_movies : callable
        Like the built-in ``map`` (the default), which it replaces to link the movies in
        parallel: called once with a function and the movies' jobs, it returns their results
        in order.

    Returns
    -------
    pandas.DataFrame
        :data:`TRACK_COLUMNS`, row for row: ``track_id`` is unique within the cohort (movies in
        order of first row), ``track_frames`` is how many rows its track has.
    """
    check_min_track_frames(min_track_frames)
    movies = cells.groupby("movie", sort=False).indices
    jobs = [
        (cells.iloc[rows][["frame", "pixel_size_um", *POSITION]],
         frame_intervals_s.get(movie) or DEFAULT_FRAME_INTERVAL_S, max_speed_um_per_min)
        for movie, rows in movies.items()
    ]
    track = np.zeros(len(cells), np.int64)
    offset = 0
    for rows, local in zip(movies.values(), map_movies(_link_movie, jobs), strict=True):
        track[rows] = local + offset
        offset += int(local.max()) + 1 if len(local) else 0
    return track_columns(track, min_track_frames)


def track_columns(track_ids: np.ndarray, min_track_frames: int = MIN_TRACK_FRAMES) -> pd.DataFrame:
    """Build the :data:`TRACK_COLUMNS` of rows whose tracks are ``track_ids``.

    They are the id, how many rows its track has, and whether that is fewer than
    ``min_track_frames``.
    """
    track_ids = np.asarray(track_ids, dtype=np.int64)
    frames = track_lengths(track_ids)
    return pd.DataFrame({"track_id": track_ids, "track_frames": frames.astype(np.int32),
                         "short_track": frames < min_track_frames})


def count_tracks(columns: pd.DataFrame) -> tuple[int, int]:
    """How many tracks :func:`track_columns` holds, and how many of them are short."""
    first = ~columns["track_id"].duplicated()
    return int(first.sum()), int(columns["short_track"][first].sum())
