"""Calls for a cohort: each tracked cell's P(high) from a model, each patient's population call.

A cell is a track (:mod:`lch.evaluation`): its P(high) is the model's classifier applied to the
mean latent code of its frames. A patient's call pools its distinct cells, as the paper pools
about 20 cells of a line: the mean P(high) over them, with a bootstrap interval over cells, and
whether the patient had at least :data:`lch.classify.MIN_POPULATION` cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lch.classify import MIN_POPULATION, UNKNOWN, binary_labels, call_of
from lch.evaluation import (
    N_BOOTSTRAP,
    cell_index,
    cell_means,
    first_of_each,
    percentile_interval,
    sigmoid,
)
from lch.model import LCHModel

CELL_COLUMNS = ["cohort", "movie", "patient", "cell_line", "label", "track_id"]
"""What a prediction row carries of its cell, besides ``frames``, ``score`` and ``p_high``."""


def cell_predictions(
    table: pd.DataFrame, codes: np.ndarray, model: LCHModel, model_version: str
) -> pd.DataFrame:
    """One row per tracked cell of one cohort: its P(high) from the mean code of its frames.

    Parameters
    ----------
    table : pandas.DataFrame
        The cohort's ``cells.parquet`` rows (one per cell per frame).
    codes : numpy.ndarray
        Each row's latent code (N, D).
    model : LCHModel
        The model whose classifier scores the descriptors.
    model_version : str
        Written in every row.

    Returns
    -------
    pandas.DataFrame
        :data:`CELL_COLUMNS`, ``frames``, ``score`` (the descriptor's logit: its projection on
        the discriminant, plus the bias), ``p_high`` and ``model_version``.
    """
    if len(codes) != len(table):
        raise ValueError(f"{len(codes)} codes for {len(table)} cell rows")
    cell = cell_index(table, by=("track_id",))
    weight = model.weight.double().cpu().numpy()
    score = cell_means(codes, cell) @ weight + float(model.bias)
    out = pd.DataFrame({c: first_of_each(table[c].to_numpy(), cell) for c in CELL_COLUMNS})
    return out.assign(frames=np.bincount(cell), score=score, p_high=sigmoid(score),
                      model_version=str(model_version))


def patient_calls(predictions: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each patient's population call from its distinct cells.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``label``, ``cells``, ``p_high`` (mean over its cells), ``ci_low``
        and ``ci_high`` (:func:`lch.evaluation.percentile_interval` of
        :data:`lch.evaluation.N_BOOTSTRAP` resamples of its cells), ``call``
        (:func:`lch.classify.call_of` of ``p_high``), ``reaches_minimum`` (at least
        :data:`MIN_POPULATION` cells) and
        ``correct`` (None for an unlabelled patient).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for patient, group in predictions.groupby("patient", sort=True):
        p = group["p_high"].to_numpy()
        low, high = percentile_interval(
            p[rng.integers(0, len(p), (N_BOOTSTRAP, len(p)))].mean(axis=1))
        label = str(group["label"].iloc[0])
        call = call_of(p.mean())
        known = binary_labels([label])[0] != UNKNOWN
        rows.append({
            "patient": patient, "label": label, "cells": len(p), "p_high": float(p.mean()),
            "ci_low": low, "ci_high": high,
            "call": call, "reaches_minimum": len(p) >= MIN_POPULATION,
            "correct": (call == label.lower()) if known else None,
        })
    return pd.DataFrame(rows)


def call_accuracy(calls: pd.DataFrame) -> float | None:
    """Fraction of labelled patients called right (None when no patient is labelled)."""
    known = calls["correct"].dropna()
    return float(known.astype(bool).mean()) if len(known) else None
