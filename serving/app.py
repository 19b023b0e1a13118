"""The Ray Serve application: an HTTP ingress composed with a Classifier and an Exaggerator.

Run it with ``lch serve``, ``serve run lch.serving.app:build_app`` or ``serve deploy
serving/config.yaml`` (KubeRay's RayService runs that same config). The HTTP contract (limits,
request parsing, response models) is in :mod:`lch.serving.contract`.
"""


import asyncio
import base64
import hmac
import io
import os
from typing import Annotated

import numpy as np
import pandas as pd
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from lch.cells import frame_cells
from lch.cellstore import CellStoreError, UnknownMovie, movie_cells
from lch.evaluation import cell_means
from lch.exaggerate import encode_crops, exaggerate, exaggerate_codes
from lch.exaggeration_report import montage
from lch.model import AAEConfig
from lch.paths import cohort_dir, lch_home
from lch.registry import CHAMPION_ALIAS, REGISTERED_MODEL, ModelNotFound, resolve_version
from lch.serving import contract
from lch.serving.contract import RequestError
from lch.serving.model_source import LoadedModel, ModelSource
from lch.single_cell import cell_at, model_crop
from lch.storage import storage_options_from_env
from lch.tracking import link_tracks

TOKEN_ENV = "LCH_API_TOKEN"
# Sized for one 2-core machine; serving/config.yaml overrides them for a cluster.
CLASSIFIER_AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
    "upscale_delay_s": 2.0, "downscale_delay_s": 30.0, "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
}
EXAGGERATOR_AUTOSCALING = {**CLASSIFIER_AUTOSCALING, "target_ongoing_requests": 2}
INGRESS_AUTOSCALING = {**CLASSIFIER_AUTOSCALING, "target_ongoing_requests": 16}
# A model deployment that cannot take the request now (replicas dead or restarting, queue full).
UNAVAILABLE = (RayActorError, BackPressureError, DeploymentUnavailableError,
               ReplicaUnavailableError)
RETRY_AFTER_S = 5
VERSIONS_PER_REPLICA = 2
"""Named versions a model replica keeps loaded besides the champion (least recently used go)."""


def _cells_of_frames(
    frames: np.ndarray, config: AAEConfig, pixel_size_um: float, frame_interval_s: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """Segment and track frames with the ingestion code.

    Return the kept cells' positions and tracks, and their crops (cut as the model's training
    crops were).
    """
    tables, crops = [], []
    for t, frame in enumerate(frames):
        table, frame_crops = frame_cells(frame, config.crop_size, pixel_size_um=pixel_size_um,
                                         field_of_view_um=config.field_of_view_um)
        kept = table[table["drop_reason"] == ""]
        tables.append(kept[["centroid_y", "centroid_x"]].assign(frame=t))
        crops.append(frame_crops)
    cells = pd.concat(tables, ignore_index=True)
    cells["track_id"] = link_tracks(cells, pixel_size_um=pixel_size_um,
                                    frame_interval_s=frame_interval_s)
    return cells, np.concatenate(crops)


def _score_movie(loaded: LoadedModel, cells: pd.DataFrame,
                 crops: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score each cell in each frame, and each track from the mean code of its frames.

    Return the cells with their P(high), and the tracks' P(high) (rows in ``track_id`` order,
    with their frame counts).
    """
    ids, cell = np.unique(cells["track_id"].to_numpy(), return_inverse=True)
    if not len(cells):
        return cells.assign(p_high=[]), pd.DataFrame({"track_id": ids, "frames": ids,
                                                      "p_high": ids})
    with torch.inference_mode():
        z = loaded.model.encode(torch.from_numpy(crops.astype(np.float32))[:, None])
        per_frame = loaded.model.classify_latent(z).numpy()
        means = torch.from_numpy(cell_means(z.numpy(), cell)).to(z.dtype)
        per_track = loaded.model.classify_latent(means).numpy()
    tracks = pd.DataFrame({"track_id": ids, "frames": np.bincount(cell), "p_high": per_track})
    return cells.assign(p_high=per_frame), tracks


def _stored_movie(root: str, cohort: str, movie: str,
                  loaded: LoadedModel) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a segmented movie's cells and crops from the data root.

    The names were checked in the ingress (:func:`lch.serving.contract.stored_movie`).
    """
    try:
        cells, crops = movie_cells(cohort_dir(cohort, root), movie, storage_options_from_env(root))
    except CellStoreError:
        raise RequestError(f"'cohort': no segmented cohort {cohort!r} here", 404) from None
    except UnknownMovie as exc:
        raise RequestError(f"'movie': cohort {cohort!r} has {exc}", 404) from None
    size = loaded.model.config.crop_size
    if crops.shape[1:] != (size, size):
        raise RequestError(f"cohort {cohort!r} was cut into {crops.shape[1]}-px crops; version "
                           f"{loaded.version} takes {size} px")
    return cells, crops


def _model_crops(
    images: np.ndarray, config: AAEConfig, normalised: bool | None, pixel_size_um: float
) -> list[tuple[np.ndarray, str]]:
    return [model_crop(image, config.crop_size, field_of_view_um=config.field_of_view_um,
                       pixel_size_um=pixel_size_um, normalised=normalised, resize=False,
                       what=f"crop {i}") for i, image in enumerate(images)]


class _FollowsModel:
    """Shared by the model deployments.

    It holds the model source and its polling task, the versions requests name (Serve model
    multiplexing), and the data root stored movies are read from.
    """

    async def __init__(self, model_alias: str, tracking_uri: str | None, poll_interval_s: float,
                       data_root: str):
        self.source = await asyncio.to_thread(ModelSource, model_alias, tracking_uri)
        self.data_root = data_root
        self._follower = asyncio.get_running_loop().create_task(
            self.source.follow(poll_interval_s)
        )

    @serve.multiplexed(max_num_models_per_replica=VERSIONS_PER_REPLICA)
    async def _named_version(self, version: str) -> LoadedModel:
        return await asyncio.to_thread(self.source.load_version, version)

    async def _model(self) -> LoadedModel:
        """Return the version the request named (its multiplexed model id), else the alias's."""
        version = serve.get_multiplexed_model_id()
        return await self._named_version(version) if version else self.source.current

    async def info(self) -> dict:
        """Describe the version that answers (the fields of :class:`contract.ModelInfo`)."""
        loaded = await self._model()
        return {
            "name": self.source.name, "alias": self.source.alias, "version": loaded.version,
            "run_id": loaded.run_id, "crop_size": loaded.model.config.crop_size,
            "latent_dim": loaded.model.config.latent_dim, "tags": loaded.tags,
        }


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5}, autoscaling_config=CLASSIFIER_AUTOSCALING,
    max_ongoing_requests=32,
)
class Classifier(_FollowsModel):
    """P(high) for crops, batched across concurrent requests with ``@serve.batch``."""

    # Serve splits batches by multiplexed model id: one version per batch.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _predict(self, crop_sets: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        loaded = await self._model()  # one model for the whole batch, even mid-swap
        size = loaded.model.config.crop_size
        for crops in crop_sets:
            if crops.shape[1:] != (size, size):
                raise ValueError(f"crops are {crops.shape[1:]}, version {loaded.version} "
                                 f"takes ({size}, {size})")
        stacked = torch.from_numpy(np.concatenate(crop_sets).astype(np.float32))[:, None]
        with torch.inference_mode():
            p = loaded.model(stacked).numpy()
        splits = np.cumsum([len(c) for c in crop_sets])[:-1]
        return [(loaded.version, part) for part in np.split(p, splits)]

    async def classify_crops(
        self, images: np.ndarray, normalised: bool | None, pixel_size_um: float
    ) -> tuple[str, np.ndarray, list[str]]:
        """Return P(high) of sent crops or raw windows, and which each one was.

        Each is made the model's crop first (:func:`lch.single_cell.model_crop`).
        """
        config = (await self._model()).model.config
        made = await asyncio.to_thread(_model_crops, images, config, normalised, pixel_size_um)
        version, p = await self._predict(np.stack([crop for crop, _ in made]))
        return version, p, [kind for _, kind in made]

    async def classify_frames(
        self, frames: np.ndarray, pixel_size_um: float, frame_interval_s: float
    ) -> tuple[str, pd.DataFrame, pd.DataFrame]:
        """Segment and track sent frames; score each cell and each track (:func:`_score_movie`)."""
        loaded = await self._model()
        cells, crops = await asyncio.to_thread(
            _cells_of_frames, frames, loaded.model.config, pixel_size_um, frame_interval_s
        )
        return (loaded.version, *await asyncio.to_thread(_score_movie, loaded, cells, crops))

    async def classify_stored(self, cohort: str, movie: str) -> tuple[str, pd.DataFrame,
                                                                      pd.DataFrame]:
        """Score a movie ingested and segmented on this server, all its frames."""
        loaded = await self._model()
        cells, crops = await asyncio.to_thread(_stored_movie, self.data_root, cohort, movie,
                                               loaded)
        return (loaded.version, *await asyncio.to_thread(_score_movie, loaded, cells, crops))


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5}, autoscaling_config=EXAGGERATOR_AUTOSCALING,
    max_ongoing_requests=8,
)
class Exaggerator(_FollowsModel):
    """Decoded images along the discriminant direction, with their morphology."""

    async def exaggerate(self, image: np.ndarray, sigmas: list[float], method: str,
                         normalised: bool | None, pixel_size_um: float,
                         point: tuple[int, int] | None = None):
        """Exaggerate a sent crop or raw window, or the cell at ``point`` (y, x) of a raw frame.

        A crop or window is made the model's crop first.
        """
        loaded = await self._model()
        config = loaded.model.config
        if point is None:
            crop, kind = await asyncio.to_thread(
                model_crop, image, config.crop_size, field_of_view_um=config.field_of_view_um,
                pixel_size_um=pixel_size_um, normalised=normalised, what="crop",
            )
        else:
            crop = await asyncio.to_thread(
                cell_at, image, *point, config.crop_size, pixel_size_um=pixel_size_um,
                field_of_view_um=config.field_of_view_um,
            )
            kind = f"the cell at x={point[1]}, y={point[0]} of a frame, cut as ingestion does"
        result = await asyncio.to_thread(exaggerate, loaded.model, crop, sigmas, cells=["crop"],
                                         method=method)
        return loaded.version, result, kind

    async def exaggerate_stored(self, cohort: str, movie: str, key: str, index: int,
                                sigmas: list[float], method: str):
        """Exaggerate a cell of a stored movie.

        Either a track (``key`` "track_id", from the mean code of its frames, the descriptor it
        is classified by) or one cell in one frame ("cell").
        """
        loaded = await self._model()
        cells, crops = await asyncio.to_thread(_stored_movie, self.data_root, cohort, movie,
                                               loaded)
        if key == "cell":
            if index >= len(cells):
                raise RequestError(f"'cell' {index}: movie {movie!r} has {len(cells)} cells "
                                   f"(0 to {len(cells) - 1})", 404)
            rows = np.array([index])
            kind = (f"cell {index} of movie {movie} (frame {cells['frame'].iloc[index]}, "
                    f"track {cells['track_id'].iloc[index]})")
        else:
            rows = np.flatnonzero(cells["track_id"].to_numpy() == index)
            if not len(rows):
                raise RequestError(f"'track_id' {index}: movie {movie!r} has no such track "
                                   f"(its tracks: {_ranges(cells['track_id'])})", 404)
            kind = f"track {index} of movie {movie} (the mean code of its {len(rows)} frames)"
        codes = await asyncio.to_thread(encode_crops, loaded.model, crops[rows])
        result = await asyncio.to_thread(exaggerate_codes, loaded.model, codes.mean(axis=0),
                                         sigmas, cells=[kind], method=method)
        return loaded.version, result, kind


# FastAPI's own docs routes are off: the ones below honour the bearer token.
api = FastAPI(
    title="LCH",
    description="Classify melanoma cells as highly/lowly metastatic from label-free images, "
    "and exaggerate what the classifier relies on (Zaritsky et al., Cell Systems 2021).",
    version="1",
    docs_url=None, redoc_url=None, openapi_url=None,
)
bearer = HTTPBearer(auto_error=False, description=f"needed when {TOKEN_ENV} is set on the server")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise RequestError("missing or wrong bearer token", status=401)


def require_token_for_docs(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    if not request.app.state.public_docs:
        require_token(request, credentials)


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


@api.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token_for_docs)])
async def openapi_schema() -> JSONResponse:
    return JSONResponse(api.openapi())


@api.get("/docs", include_in_schema=False, dependencies=[Depends(require_token_for_docs)])
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="LCH")


@api.get("/redoc", include_in_schema=False, dependencies=[Depends(require_token_for_docs)])
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}/openapi.json", title="LCH")


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is None:
        raise RequestError("a Content-Length header is required", status=411)
    try:
        contract.check_body_size(int(declared))
    except ValueError as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError("Content-Length is not a number", status=400) from exc
    body = await request.body()
    contract.check_body_size(len(body))
    return body


async def _upload(request: Request) -> tuple[bytes, str, dict]:
    """Read the single file of a multipart body, its name, and the other form fields."""
    form = await request.form(max_files=1, max_fields=8)
    files = [(k, v) for k, v in form.multi_items() if hasattr(v, "read")]
    if len(files) != 1:
        raise RequestError("multipart body must hold exactly one file (field 'file')")
    upload = files[0][1]
    fields = {k: v for k, v in form.multi_items() if not hasattr(v, "read")}
    return await upload.read(), upload.filename or "upload", fields


def _ranges(values: pd.Series) -> str:
    """Sorted distinct ids as short ranges: "0-4, 7, 9-12"."""
    ids = np.unique(values.to_numpy())
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(ids, breaks)]
    return ", ".join(parts)


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _movie_response(version: str, cells: pd.DataFrame,
                    tracks: pd.DataFrame) -> contract.ClassifyResponse:
    """Build a movie's answer: every cell of every frame, every track, the call over them."""
    columns = ["frame", "centroid_y", "centroid_x", "track_id", "p_high"]
    return contract.ClassifyResponse(
        model_version=version,
        cells=[contract.Cell(index=i, **row) for i, row in
               enumerate(cells[columns].to_dict("records"))],
        tracks=[contract.Track(**row) for row in tracks.to_dict("records")],
        population=contract.population(tracks["p_high"].to_numpy()),
    )


class Health(BaseModel):
    status: str


# Like Serve's own HTTP proxies, the ingress reserves no CPU: it only parses and routes, and
# on a 2-core machine every reserved fraction is one a model replica cannot use.
@serve.deployment(
    ray_actor_options={"num_cpus": 0}, autoscaling_config=INGRESS_AUTOSCALING,
    max_ongoing_requests=64,
)
@serve.ingress(api)
class Ingress:
    """HTTP routes (OpenAPI at /docs); the models run in the composed deployments."""

    def __init__(self, classifier: DeploymentHandle, exaggerator: DeploymentHandle,
                 token: str | None = None, public_docs: bool = False,
                 tracking_uri: str | None = None) -> None:
        self.classifier, self.exaggerator = classifier, exaggerator
        self.tracking_uri = tracking_uri
        api.state.token = token
        api.state.public_docs = public_docs

    async def _handles(self, reference: str | None) -> tuple[DeploymentHandle, DeploymentHandle]:
        """Return the model deployments, routed to the version ``reference`` names.

        Routing is Serve model multiplexing; for the followed champion (None) they are returned
        as they are.
        """
        if reference is None:
            return self.classifier, self.exaggerator
        try:
            version = await asyncio.to_thread(resolve_version, reference, self.tracking_uri)
        except ModelNotFound:
            raise RequestError(f"'model': {REGISTERED_MODEL} has no version or alias "
                               f"{reference!r}", 404) from None
        return (self.classifier.options(multiplexed_model_id=version),
                self.exaggerator.options(multiplexed_model_id=version))

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        """Answer that the ingress is up (no token needed, no model called)."""
        return Health(status="ok")

    @api.get("/v1/model", response_model=contract.ModelInfo, dependencies=[Depends(require_token)])
    async def model(self, model: str | None = None) -> contract.ModelInfo:
        """Describe the version that answers (``?model=`` a version or alias, default champion)."""
        classifier, _ = await self._handles(contract.model_reference(model))
        return contract.ModelInfo(**await self._call(classifier.info.remote()))

    @api.post(
        "/v1/classify", response_model=contract.ClassifyResponse,
        dependencies=[Depends(require_token)],
        openapi_extra=contract.CLASSIFY_BODY,
    )
    async def classify(self, request: Request) -> contract.ClassifyResponse:
        """Return per-cell P(high) and the population call.

        For JSON crops, an uploaded TIFF, or a movie ingested on the server (JSON ``cohort`` and
        ``movie``).
        """
        body = await _body(request)
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            data, name, fields = await _upload(request)
            classifier, _ = await self._handles(contract.model_reference(fields.get("model")))
            px = contract.pixel_size(fields.get("pixel_size_um"))
            interval = contract.frame_interval(fields.get("frame_interval_s"))
            frames = await asyncio.to_thread(contract.tiff_frames, data, name)
            return _movie_response(*await self._call(
                classifier.classify_frames.remote(frames, px, interval)
            ))
        if not kind.startswith("application/json"):
            raise RequestError("send application/json crops or a multipart/form-data TIFF", 415)
        payload = await asyncio.to_thread(contract.parse_json, body)
        classifier, _ = await self._handles(contract.model_reference(payload.get("model")))
        stored = contract.stored_movie(payload)
        if stored is not None:
            return _movie_response(*await self._call(classifier.classify_stored.remote(*stored)))
        normalised = contract.normalised_flag(payload.get("normalised"))
        px = contract.pixel_size(payload.get("pixel_size_um"))
        images = await asyncio.to_thread(contract.request_crops, payload, "crops")
        version, p, kinds = await self._call(
            classifier.classify_crops.remote(images, normalised, px)
        )
        return contract.ClassifyResponse(
            model_version=version,
            cells=[contract.Cell(index=i, p_high=float(pi), input=k)
                   for i, (pi, k) in enumerate(zip(p, kinds, strict=True))],
            tracks=[],
            population=contract.population(p),
        )

    @api.post(
        "/v1/exaggerate", response_model=contract.ExaggerateResponse,
        dependencies=[Depends(require_token)],
        openapi_extra=contract.EXAGGERATE_BODY,
        responses={200: {"content": {"image/png": {}},
                         "description": "JSON, or a montage PNG for Accept: image/png"}},
    )
    async def exaggerate(self, request: Request):
        """Decode one cell moved along the discriminant direction by each sigma.

        The cell is a sent crop or window, the cell at x, y of an uploaded frame, or a cell of a
        stored movie.
        """
        body = await _body(request)
        kind = request.headers.get("content-type", "")
        point = image = stored = None
        if kind.startswith("multipart/form-data"):
            data, name, fields = await _upload(request)
            picked = contract.picked_point(fields)
            if picked is None:
                image = await asyncio.to_thread(contract.image_crop, data, name)
            else:
                frames = await asyncio.to_thread(contract.tiff_frames, data, name)
                t, *point = picked
                if t >= len(frames):
                    raise RequestError(f"'frame' {t}: {name} has {len(frames)} frame(s)")
                image = frames[t]
        elif kind.startswith("application/json"):
            fields = await asyncio.to_thread(contract.parse_json, body)
            stored = contract.stored_movie(fields)
            if stored is None:
                image = (await asyncio.to_thread(
                    contract.request_crops, fields, "crop", max_cells=1
                ))[0]
        else:
            raise RequestError("send an application/json crop or a multipart/form-data image", 415)
        _, exaggerator = await self._handles(contract.model_reference(fields.get("model")))
        sigmas = contract.sigmas_list(fields.get("sigmas"))
        method = contract.exaggeration_method(fields.get("method"))
        if stored is not None:
            call = exaggerator.exaggerate_stored.remote(*stored, *contract.stored_cell(fields),
                                                        sigmas, method)
        else:
            normalised = contract.normalised_flag(fields.get("normalised"))
            px = contract.pixel_size(fields.get("pixel_size_um"))
            call = exaggerator.exaggerate.remote(image, sigmas, method, normalised, px,
                                                 tuple(point) if point else None)
        version, result, made = await self._call(call)
        if "image/png" in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            montage(result).save(buffer, "PNG")
            return Response(buffer.getvalue(), media_type="image/png",
                            headers={"X-Model-Version": version})
        features = [c for c in result.table.columns if c not in ("cell", "sigma")]
        rows = result.table.to_dict("records")
        return contract.ExaggerateResponse(
            model_version=version,
            input=made,
            method=method,
            steps=[
                contract.Step(
                    sigma=float(s), p_high=float(result.probability[0, k]),
                    png_base64=_png(result.images[0, k]),
                    morphology={f: _finite_or_none(rows[k][f]) for f in features},
                )
                for k, s in enumerate(result.sigmas)
            ],
        )

    @staticmethod
    async def _call(response):
        """Await a model deployment, turning its failures into HTTP errors.

        Its input errors are the client's (422), its absence a 503 with Retry-After.
        """
        try:
            return await response
        except ValueError as exc:  # a replica's own input check (e.g. crop size after a swap)
            status = getattr(getattr(exc, "cause", exc), "status", 422)
            raise RequestError(str(exc).splitlines()[-1], status) from exc
        except UNAVAILABLE as exc:
            raise RequestError(
                f"the model is not available right now ({type(exc).__name__}); retry shortly",
                503,
            ) from exc


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``args:`` in the Serve config)."""

    model_alias: str = CHAMPION_ALIAS
    tracking_uri: str | None = None
    poll_interval_s: float = 10.0
    token_env: str = TOKEN_ENV
    data_root: str | None = None
    """Where ingested cohorts are read from by name; default ``$LCH_HOME``."""
    public_docs: bool = False
    """Serve /docs, /redoc and /openapi.json without the token (they describe, never act)."""


def build_app(args: dict | None = None):
    """Build the application: ``Ingress(Classifier, Exaggerator)``, each following the alias.

    The bearer token is read from the environment variable named by ``token_env`` (by default
    ``LCH_API_TOKEN``) of the process that builds the app; none means no authentication. With a
    token, the API description routes need it too, unless ``public_docs``.
    """
    from lch.mlflow_store import tracking_uri

    config = AppArgs(**(args or {}))
    uri = config.tracking_uri or tracking_uri()
    root = config.data_root or str(lch_home())
    model_args = (config.model_alias, uri, config.poll_interval_s, root)
    return Ingress.bind(
        Classifier.bind(*model_args),
        Exaggerator.bind(*model_args),
        os.environ.get(config.token_env) or None,
        config.public_docs,
        uri,
    )


__all__ = ["REGISTERED_MODEL", "build_app", "Classifier", "Exaggerator", "Ingress"]
