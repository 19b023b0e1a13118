"""The optional Cellpose segmenter (``--segmenter cellpose``): Cellpose-SAM on weights on disk.

It runs only when the ``cellpose`` package is installed (``pip install -e '.[cellpose]'``, which
pins :data:`CELLPOSE_VERSION`) and its model weights are already in the folder named by
Cellpose's own variable ``CELLPOSE_LOCAL_MODELS_PATH``. Nothing is ever downloaded: the weights
are checked in the driver before any work (:func:`find_weights`), the model is loaded from that
absolute path (Cellpose downloads only when it is given a model *name* whose file is missing),
and Cellpose's download function is replaced by one that refuses, so not even a file removed
between the check and the load can start a download.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import numpy as np

from lch.labels import SegmenterUnavailable

CELLPOSE_VERSION = "4.2.1.1"
"""The version the ``[cellpose]`` extra installs (Cellpose-SAM; torch ≥ 1.6, NumPy 2)."""
WEIGHTS_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
WEIGHT_FILES = ("cpsam_v2", "cpsam")
"""Cellpose-SAM weight files, as cellpose 4.2 names them in its models folder (no extension):
its default model first, then the first Cellpose-SAM release."""


def _how_to() -> str:
    return (
        "LCH never downloads model weights at run time. To provide them: "
        f"1. pip install -e '.[cellpose]' (cellpose {CELLPOSE_VERSION}); "
        f"2. copy the Cellpose-SAM weights file {WEIGHT_FILES[0]!r} (or {WEIGHT_FILES[1]!r}; "
        "cellpose keeps it in ~/.cellpose/models on a machine where it has fetched it) into a "
        "folder every Ray worker can read; "
        f"3. export {WEIGHTS_ENV}=that folder"
    )


def _package_problem() -> str | None:
    if importlib.util.find_spec("cellpose") is None:
        return "the cellpose package is not installed"
    version = importlib.metadata.version("cellpose")
    if not version.startswith("4."):
        return f"cellpose {version} is installed; LCH uses cellpose 4 (Cellpose-SAM)"
    return None


def _weights(folder: str | None) -> tuple[Path | None, str | None]:
    if not folder:
        return None, f"{WEIGHTS_ENV} is not set"
    for name in WEIGHT_FILES:
        path = Path(folder).expanduser() / name
        if path.is_file() and path.stat().st_size > 0:
            return path.resolve(), None
    return None, f"{WEIGHTS_ENV}={folder} holds none of the weight files {', '.join(WEIGHT_FILES)}"


def find_weights() -> Path:
    """Find the Cellpose-SAM weights to load and check the package (nothing imported or read).

    Returns
    -------
    pathlib.Path
        The absolute path of the first of :data:`WEIGHT_FILES` present in
        ``$CELLPOSE_LOCAL_MODELS_PATH``.

    Raises
    ------
    lch.labels.SegmenterUnavailable
        The package is missing (or not cellpose 4), the variable is unset, or the folder holds
        no weights; the message lists every problem and how to provide the weights.
    """
    weights, missing = _weights(os.environ.get(WEIGHTS_ENV))
    problems = [p for p in (_package_problem(), missing) if p]
    if problems:
        raise SegmenterUnavailable(
            f"--segmenter cellpose cannot run: {'; '.join(problems)}. {_how_to()}"
        )
    return weights


def _never_download(url: str, dst: str, progress: bool = True) -> None:
    raise SegmenterUnavailable(
        f"cellpose tried to download {url} to {dst}; the weights must already be on disk. "
        f"{_how_to()}"
    )


class CellposeSegmenter:
    """``(frame, pixel_size_um) -> labels`` with Cellpose-SAM loaded once from ``weights``.

    Parameters
    ----------
    weights : Path
        A weight file found by :func:`find_weights`.
    gpu : bool, optional
        Run on CUDA; default: when torch sees a GPU.
    """

    def __init__(self, weights: Path, *, gpu: bool | None = None) -> None:
        weights = Path(weights)
        if not weights.is_file():  # checked again: Cellpose would fetch its default instead
            raise SegmenterUnavailable(f"{weights}: Cellpose weights not found. {_how_to()}")
        import torch
        from cellpose import models, utils

        # cellpose.models fetches through this module attribute; LCH never downloads.
        utils.download_url_to_file = _never_download
        use_gpu = torch.cuda.is_available() if gpu is None else gpu
        self.model = models.CellposeModel(gpu=use_gpu, pretrained_model=str(weights))

    def __call__(self, frame: np.ndarray, pixel_size_um: float) -> np.ndarray:
        """Segment one frame with Cellpose-SAM; return its label image (int32, 0 background)."""
        # Cellpose-SAM is trained on cell diameters of 7.5-120 px and rescales itself, so the
        # pixel size is not needed (10-30 µm cells are 30-90 px at 0.325 µm).
        masks, _, _ = self.model.eval(np.asarray(frame, dtype=np.float32))
        return np.asarray(masks, dtype=np.int32)
