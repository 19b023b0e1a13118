"""Scoring a segmentation against reference labels: object F1, and the centre cell of a crop."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

CENTRE_LABEL = 1
"""In a reference mask of a single-cell crop, the label of the cell the crop is centred on."""
PART_FRACTION = 0.5
"""An object covering less of the centre cell than this is only a part of it."""


def _overlaps(pred: np.ndarray, true: np.ndarray):
    """Pixel counts of every (pred label, true label) pair that overlaps."""
    both = (pred > 0) & (true > 0)
    pairs, counts = np.unique(
        np.stack([pred[both], true[both]]).astype(np.int64), axis=1, return_counts=True
    )
    return pairs[0], pairs[1], counts


def object_f1(
    pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float | int]:
    """Object-level precision, recall and F1 with one-to-one matching at IoU >= threshold.

    Parameters
    ----------
    pred_labels, true_labels
        Label images of the same shape (0 = background).
    iou_threshold
        A predicted and a true object match if their intersection over union reaches this.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (1.0 when both images are empty), ``matched``,
        ``n_pred`` and ``n_true``.
    """
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"shapes differ: pred {pred.shape} vs true {true.shape}")
    pred_ids, pred_area = np.unique(pred[pred > 0], return_counts=True)
    true_ids, true_area = np.unique(true[true > 0], return_counts=True)
    n_pred, n_true = len(pred_ids), len(true_ids)
    matched = 0
    if n_pred and n_true:
        p, t, inter = _overlaps(pred, true)
        pi, ti = np.searchsorted(pred_ids, p), np.searchsorted(true_ids, t)
        iou = np.zeros((n_pred, n_true))
        iou[pi, ti] = inter / (pred_area[pi] + true_area[ti] - inter)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched = int(np.sum(iou[rows, cols] >= iou_threshold))
    precision = matched / n_pred if n_pred else float(n_true == 0)
    recall = matched / n_true if n_true else float(n_pred == 0)
    total = precision + recall
    f1 = 2 * precision * recall / total if total else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": matched,
        "n_pred": n_pred,
        "n_true": n_true,
    }


def centre_cell_score(
    pred_labels: np.ndarray,
    reference: np.ndarray,
    *,
    fragment_fraction: float = 0.1,
    merge_fraction: float = 0.2,
) -> dict[str, float | str]:
    """How one crop's centre cell came out: found as one object, fragmented, merged or missed.

    Parameters
    ----------
    pred_labels : ndarray
        Label image from a segmenter.
    reference : ndarray
        Reference labels of the same crop: :data:`CENTRE_LABEL` for the centre cell, other
        positive labels for its neighbours.
    fragment_fraction : float
        A second predicted object covering this fraction of the centre cell makes it
        "fragmented".
    merge_fraction : float
        The centre cell's object covering this fraction of a neighbour makes it "merged".

    Returns
    -------
    dict
        ``status`` ("one", "fragmented", "part", "merged" or "missed") and ``iou``, the
        intersection over union of the centre cell and the predicted object covering most of it
        (0 if missed). "part": that object covers less than :data:`PART_FRACTION` of the cell.
    """
    pred, ref = np.asarray(pred_labels), np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: pred {pred.shape} vs reference {ref.shape}")
    centre = ref == CENTRE_LABEL
    ids, counts = np.unique(pred[centre & (pred > 0)], return_counts=True)
    if len(ids) == 0:
        return {"status": "missed", "iou": 0.0}
    found = pred == ids[np.argmax(counts)]
    iou = float((found & centre).sum() / (found | centre).sum())
    neighbours = [ref == k for k in np.unique(ref[ref > CENTRE_LABEL])]
    if np.sum(counts >= fragment_fraction * centre.sum()) > 1:
        status = "fragmented"
    elif counts.max() < PART_FRACTION * centre.sum():
        status = "part"  # only a piece of the cell, e.g. a fragment of its interior texture
    elif any((found & n).sum() >= merge_fraction * n.sum() for n in neighbours):
        status = "merged"
    else:
        status = "one"
    return {"status": status, "iou": iou}
