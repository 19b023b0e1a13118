"""How well tracks follow known cells: the link scores of a tracker against ground truth."""

from __future__ import annotations

import numpy as np


def _links(frame: np.ndarray, group: np.ndarray) -> set[tuple[int, int]]:
    """(row, next row) of each group's successive rows in time."""
    order = np.lexsort((frame, group))
    same = group[order][1:] == group[order][:-1]
    return set(zip(order[:-1][same].tolist(), order[1:][same].tolist(), strict=True))


def link_scores(frame: np.ndarray, track: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Recovered and false links of ``track`` against the true cell identities ``truth``.

    Parameters
    ----------
    frame, track, truth : array of int, one entry per detected cell
        Its frame, its track and the true cell it is (one detection per true cell and frame).

    Returns
    -------
    dict
        ``recovered``: of the true links between consecutive frames (the same true cell found
        in frames t and t+1), the fraction the tracks also make; ``false``: of the links the
        tracks make, the fraction joining two different true cells; and both counts.
    """
    frame, track, truth = (np.asarray(a) for a in (frame, track, truth))
    made = _links(frame, track)
    true = {(a, b) for a, b in _links(frame, truth) if frame[b] == frame[a] + 1}
    wrong = sum(truth[a] != truth[b] for a, b in made)
    return {
        "recovered": len(true & made) / len(true) if true else float("nan"),
        "false": wrong / len(made) if made else 0.0,
        "true_links": len(true),
        "made_links": len(made),
    }
