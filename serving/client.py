"""Python client for the LCH Serve endpoint (what scripts, notebooks and plugins call)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

DEFAULT_URL = "http://127.0.0.1:8000"


def _pixels(images) -> np.ndarray:
    """Return crops or raw windows as they are sent.

    8-/16-bit counts stay integers (the server tells a raw window from a normalised crop by
    them); anything else goes as float32.
    """
    images = np.asarray(images)
    return images if images.dtype in (np.uint8, np.uint16) else images.astype(np.float32)


def encode_npy(array: np.ndarray) -> str:
    """Encode an array as base64 ``.npy``, for the ``*_npy`` fields of the HTTP contract.

    :func:`lch.serving.contract.request_crops` reads them.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()

class LCHClientError(RuntimeError):
    """The server refused a request; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class LCHClient:
    """Talk to ``lch serve``.

    Parameters
    ----------
    url : str
        Base URL of the Serve HTTP proxy.
    token : str, optional
        Bearer token; defaults to ``$LCH_API_TOKEN``.
    timeout : float
        Seconds per request.
    model : str, optional
        A registered version (``"3"``) or alias (``"challenger"``) to answer every request;
        default the server's champion.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0,
                 model: str | None = None):
        token = token if token is not None else os.environ.get("LCH_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.model_reference = model
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> LCHClient:
        """Return the client itself; leaving the ``with`` block closes it."""
        return self

    def __exit__(self, *exc) -> None:
        """Close the client's HTTP connections."""
        self.close()

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self._http.close()

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise LCHClientError(response.status_code, str(detail))
        return response

    def health(self) -> dict:
        """Return the server's ``/healthz`` answer (``{"status": "ok"}`` when it is up)."""
        return self._checked(self._http.get("/healthz")).json()

    def _with_model(self, fields: dict) -> dict:
        """``fields`` with the chosen model, the ``None`` values left out."""
        fields = {**fields, "model": self.model_reference}
        return {k: v for k, v in fields.items() if v is not None}

    def model(self) -> dict:
        """Which model version answers, its crop size and tags."""
        params = self._with_model({})
        return self._checked(self._http.get("/v1/model", params=params)).json()

    def predict_movie(self, cohort: str, movie: str) -> dict:
        """Classify a movie already ingested and segmented on the server, by name.

        The answer holds every cell of every frame, every tracked cell, and the population call
        over the tracks (no frame limit: nothing is uploaded).
        """
        body = self._with_model({"cohort": cohort, "movie": movie})
        return self._checked(self._http.post("/v1/classify", json=body)).json()

    def classify(
        self, source: str | Path | np.ndarray, pixel_size_um: float | None = None,
        frame_interval_s: float | None = None,
    ) -> dict:
        """Classify a TIFF movie/frame (path), or crops ((N, S, S) or (S, S) array).

        Crops are normalised crops, or raw windows cut from a movie (integer counts), whose
        centre cells the server cuts as ingestion does.

        ``pixel_size_um`` (a movie's or the windows') and ``frame_interval_s`` (a movie's);
        defaults on the server: the paper's 0.325 µm, one minute. Returns the per-crop ``cells``
        (with what each was), a movie's ``tracks``, the ``population`` call over distinct cells
        and the ``model_version``.
        """
        if isinstance(source, str | Path):
            path = Path(source)
            files = {"file": (path.name, path.read_bytes(), "image/tiff")}
            fields = self._with_model({"pixel_size_um": pixel_size_um,
                                       "frame_interval_s": frame_interval_s})
            data = {k: str(v) for k, v in fields.items()}
            response = self._http.post("/v1/classify", files=files, data=data)
        else:
            body = self._with_model({"crops_npy": encode_npy(_pixels(source)),
                                     "pixel_size_um": pixel_size_um})
            response = self._http.post("/v1/classify", json=body)
        return self._checked(response).json()

    def exaggerate(
        self, crop: str | Path | np.ndarray | None = None, sigmas: list[float] | None = None, *,
        pixel_size_um: float | None = None, at: tuple[int, int, int] | None = None,
        cohort: str | None = None, movie: str | None = None, track_id: int | None = None,
        cell: int | None = None, method: str | None = None,
    ) -> dict:
        """Decode a cell moved along the discriminant direction by each sigma.

        ``crop`` is a normalised crop or a raw window (array or PNG/TIFF path, of
        ``pixel_size_um``); with ``at`` = (frame, y, x) it is a TIFF frame or movie and the cell
        at that point is segmented, picked and exaggerated. Without ``crop``, a cell of a movie
        stored on the server: ``cohort``, ``movie`` and either ``track_id`` (a tracked cell,
        from the mean code of its frames) or ``cell`` (an index of :meth:`predict_movie`'s
        ``cells``). ``method``: "linear" (the server's default, the paper's) or
        "latent-shift".

        Returns the JSON answer with each step's ``image`` decoded to a float array in [0, 1].
        """
        if crop is None:
            body = self._with_model({"cohort": cohort, "movie": movie, "track_id": track_id,
                                     "cell": cell, "sigmas": sigmas, "method": method})
            response = self._http.post("/v1/exaggerate", json=body)
        else:
            response = self._post_crop(crop, sigmas, accept="application/json",
                                       pixel_size_um=pixel_size_um, at=at, method=method)
        response = self._checked(response)
        answer = response.json()
        for step in answer["steps"]:
            png = base64.b64decode(step["png_base64"])
            step["image"] = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255.0
        return answer

    def exaggeration_montage(
        self, crop: str | Path | np.ndarray, sigmas: list[float] | None = None
    ) -> bytes:
        """Return the montage PNG (one column per sigma, labelled with P(high))."""
        return self._checked(self._post_crop(crop, sigmas, accept="image/png")).content

    def _post_crop(self, crop, sigmas, *, accept: str, pixel_size_um: float | None = None,
                   at: tuple[int, int, int] | None = None,
                   method: str | None = None) -> httpx.Response:
        headers = {"Accept": accept}
        if isinstance(crop, str | Path):
            path = Path(crop)
            fields = {"sigmas": None if sigmas is None else ",".join(map(str, sigmas)),
                      "pixel_size_um": pixel_size_um, "method": method}
            fields |= dict(zip(("frame", "y", "x"), at, strict=True)) if at else {}
            data = {k: str(v) for k, v in self._with_model(fields).items()}
            files = {"file": (path.name, path.read_bytes())}
            return self._http.post("/v1/exaggerate", files=files, data=data, headers=headers)
        if at is not None:
            raise ValueError("a cell is picked by its position in a TIFF frame or movie (a path)")
        body = self._with_model({"crop_npy": encode_npy(_pixels(crop)),
                                 "pixel_size_um": pixel_size_um, "method": method,
                                 "sigmas": None if sigmas is None else list(sigmas)})
        return self._http.post("/v1/exaggerate", json=body, headers=headers)
