"""The Serve application over real HTTP, with a real MLflow registry: routes, limits, auth,
promotion and hot swap under load."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lch.cells import frame_cells
from lch.model import LCHModel
from lch.pipelines.runtime import free_port
from lch.promotion import PromotionRefused, list_versions, promote
from lch.registry import REGISTERED_MODEL, load_lch_model, log_lch_model
from lch.segmentation import segment_frame
from lch.serving.client import LCHClient, LCHClientError
from lch.serving.contract import MAX_BODY_BYTES, MAX_CELLS, MAX_SIGMAS
from lch.single_cell import centre_cell
from lch.synth import FRAME_INTERVAL_S, CellShape, make_cohort, render_frame
from lch.synth import PLAIN_PIXEL_SIZE_UM as PIXEL_SIZE_UM

from bombs import npy_bomb, npz_crops, png_bomb, tiff_bomb
from helpers import tiny_model
from real_cells import PIXEL_SIZE_UM as REAL_PIXEL_SIZE_UM
from real_cells import REAL

CROP = 64

pytestmark = pytest.mark.slow  # a Ray Serve application end to end


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two registered versions (held-out accuracy 0.90 and 0.95), version 1 the champion."""
    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        models = {}
        for seed, accuracy in ((1, 0.90), (2, 0.95)):
            version = log_lch_model(
                tiny_model(seed, CROP), cohorts=["test"], population_accuracy=accuracy
            )
            models[str(version)] = load_lch_model(f"models:/lch-aae/{version}")
        promote("1")
        yield models


@pytest.fixture(scope="module")
def stored(ray_session, registry, tmp_path_factory):
    """A synthetic movie ingested and segmented on the server as cohort "ward", movie
    "p00-m00"; its TIFF, for the same movie sent as an upload. Before Serve starts: its
    replicas would hold the CPUs the ingestion's Ray tasks wait for."""
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort

    manifest = make_cohort(tmp_path_factory.mktemp("ward"), name="ward", patients=1,
                           movies_per_patient=1, frames=5, seed=11, look="plain",
                           size=(256, 256))
    assert convert_cohort(manifest, progress=False).count("ok") == 1
    segment_cohort("ward", crop_size=CROP, progress=False)
    return next((manifest.parent / "raw").glob("*.tif"))


@pytest.fixture(scope="module")
def server(ray_session, registry, stored):
    from ray import serve

    from lch.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"poll_interval_s": 0.5}), name="lch", route_prefix="/")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_SECRET_TOKEN", "s3cret")
        serve.run(
            build_app({"poll_interval_s": 0.5, "token_env": "LCH_SECRET_TOKEN"}),
            name="lch-auth", route_prefix="/auth",
        )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 0.7, size=(n, CROP, CROP)).astype(np.float32)


def expected_p(model: LCHModel, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)[:, None]).numpy()


def synthetic_frame() -> np.ndarray:
    cells = [
        CellShape(label=i + 1, y=y, x=x, radius=10, arm_angles=(0.5,), arm_lengths=(12,))
        for i, (y, x) in enumerate([(60, 60), (60, 180), (180, 70), (170, 190)])
    ]
    frame, _ = render_frame(cells, size=(256, 256), rng=np.random.default_rng(0))
    return frame


def test_health_model_and_openapi(server, registry):
    with LCHClient(server) as client:
        assert client.health() == {"status": "ok"}
        info = client.model()
    assert info["version"] == "1" and info["alias"] == "champion" and info["crop_size"] == CROP
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/classify", "/v1/exaggerate", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert httpx.get(f"{server}/docs").status_code == 200


def test_classify_json_crops_matches_the_model(server, registry):
    batch = crops(25)
    with LCHClient(server) as client:
        answer = client.classify(batch)
    as_lists = httpx.post(f"{server}/v1/classify", json={"crops": batch.tolist()}).json()
    assert as_lists["cells"] == answer["cells"]
    p = np.array([c["p_high"] for c in answer["cells"]])
    np.testing.assert_allclose(p, expected_p(registry["1"], batch), atol=1e-5)
    population = answer["population"]
    assert answer["model_version"] == "1"
    assert population["n_cells"] == 25 and population["reaches_minimum"] is True
    assert population["p_high"] == pytest.approx(p.mean(), abs=1e-6)
    assert population["call"] == ("high" if p.mean() >= 0.5 else "low")
    few = LCHClient(server).classify(batch[:3])["population"]
    assert few["n_cells"] == 3 and few["reaches_minimum"] is False


def test_classify_tiff_segments_server_side_like_ingestion(server, registry, tmp_path):
    frame = synthetic_frame()
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, np.stack([frame, frame]), photometric="minisblack")
    table, frame_crops = frame_cells(frame, CROP, pixel_size_um=PIXEL_SIZE_UM)
    kept = table[table["drop_reason"] == ""]

    answer = LCHClient(server).classify(path, pixel_size_um=PIXEL_SIZE_UM)

    # The same cells in two frames: each is one tracked cell, pooled once.
    assert answer["population"]["n_cells"] == len(kept) > 0
    assert [c["frame"] for c in answer["cells"]] == [0] * len(kept) + [1] * len(kept)
    tracks = [c["track_id"] for c in answer["cells"]]
    assert tracks[: len(kept)] == tracks[len(kept):] and len(set(tracks)) == len(kept)
    assert [t["frames"] for t in answer["tracks"]] == [2] * len(kept)
    np.testing.assert_allclose([t["p_high"] for t in answer["tracks"]],
                               [answer["cells"][tracks.index(t)]["p_high"]
                                for t in range(len(kept))], atol=1e-5)
    assert answer["population"]["p_high"] == pytest.approx(
        np.mean([t["p_high"] for t in answer["tracks"]]), abs=1e-6)
    np.testing.assert_allclose(
        [c["centroid_x"] for c in answer["cells"][: len(kept)]], kept["centroid_x"], atol=1e-6
    )
    expected = expected_p(registry["1"], frame_crops)
    np.testing.assert_allclose([c["p_high"] for c in answer["cells"]][: len(kept)], expected,
                               atol=1e-5)


def test_exaggerate_json_and_montage(server, registry, tmp_path):
    crop = crops(1, seed=3)[0]
    sigmas = [-2, 0, 2, 4]
    with LCHClient(server) as client:
        answer = client.exaggerate(crop, sigmas)
        png = client.exaggeration_montage(crop, sigmas)
        Image.fromarray((crop * 255).astype(np.uint8)).save(tmp_path / "crop.png")
        from_file = client.exaggerate(tmp_path / "crop.png", sigmas)
    steps = answer["steps"]
    assert [s["sigma"] for s in steps] == sigmas
    p = [s["p_high"] for s in steps]
    assert p == sorted(p) and p[0] < p[-1]
    assert all(s["image"].shape == (CROP, CROP) for s in steps)
    assert "protrusion_count" in steps[0]["morphology"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > CROP * len(sigmas)
    assert [s["sigma"] for s in from_file["steps"]] == sigmas


def test_raw_windows_are_cut_as_ingestion_cuts_them(server, registry, tmp_path):
    # What a lab script sends: windows cut around cells from its own movies, as they are (the
    # paper's 8-bit crops and a 16-bit version), not LCH's normalised crops.
    model = registry["1"]
    image = np.asarray(Image.open(next(REAL.glob("150312_m610_s19_*.png"))))
    window16 = image.astype(np.uint16) * 257
    cut = centre_cell(image, CROP, pixel_size_um=REAL_PIXEL_SIZE_UM,
                      field_of_view_um=model.config.field_of_view_um)[1]
    expected = expected_p(model, cut[None])[0]
    with LCHClient(server) as client:
        answer = client.classify(np.stack([image, image]), pixel_size_um=REAL_PIXEL_SIZE_UM)
        answer16 = client.classify(window16[None], pixel_size_um=REAL_PIXEL_SIZE_UM)
    assert [c["input"] for c in answer["cells"]] == ["raw", "raw"]
    assert answer16["cells"][0]["input"] == "raw"
    for cell in answer["cells"] + answer16["cells"]:
        assert cell["p_high"] == pytest.approx(expected, abs=1e-5)
    # The same window through /v1/exaggerate, as a 16-bit TIFF upload: its s = 0 image is the
    # reconstruction of the cut cell, not of a near-black image.
    tifffile.imwrite(tmp_path / "window.tif", window16)
    with LCHClient(server) as client:
        steps = client.exaggerate(tmp_path / "window.tif", [0])
    posted = httpx.post(f"{server}/v1/exaggerate", files={"file": ("window.tif", (
        tmp_path / "window.tif").read_bytes())}, data={"pixel_size_um": str(REAL_PIXEL_SIZE_UM),
                                                       "sigmas": "0"}).json()
    assert posted["input"] == "raw" and steps["input"] == "raw"
    with torch.inference_mode():
        recon = model.decode(model.encode(torch.from_numpy(cut)[None, None]))[0, 0].numpy()
    assert np.abs(steps["steps"][0]["image"] - recon).max() < 1.5 / 255  # 8-bit PNG
    # Normalised crops are still used as sent, and say so.
    assert {c["input"] for c in LCHClient(server).classify(crops(2))["cells"]} == {"normalised"}
    # A window with no cell at its centre is the client's error.
    empty = np.random.default_rng(0).integers(100, 110, (CROP, CROP)).astype(np.uint16)
    with pytest.raises(LCHClientError, match="without a usable cell at its centre"):
        LCHClient(server).classify(empty[None])


def test_a_cell_picked_in_a_movie_is_exaggerated(server, registry, tmp_path):
    model = registry["1"]
    frame = synthetic_frame()
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.stack([frame, frame]), photometric="minisblack")
    labels = segment_frame(frame, pixel_size_um=PIXEL_SIZE_UM)
    table, cut = frame_cells(frame, CROP, pixel_size_um=PIXEL_SIZE_UM, labels=labels)
    kept = table[table["drop_reason"] == ""].reset_index(drop=True)
    expected = cut[int(np.flatnonzero(kept["label"] == labels[60, 180])[0])]
    with LCHClient(server) as client:
        answer = client.exaggerate(movie, [0], pixel_size_um=PIXEL_SIZE_UM, at=(1, 60, 180))
    assert "the cell at x=180, y=60" in answer["input"]
    with torch.inference_mode():
        recon = model.decode(model.encode(torch.from_numpy(expected)[None, None]))[0, 0].numpy()
    assert np.abs(answer["steps"][0]["image"] - recon).max() < 1.5 / 255
    for fields, words in (({"x": "5", "y": "5"}, "no cell at x=5, y=5"),
                          ({"x": "999", "y": "60"}, "outside the 256x256 frame"),
                          ({"x": "180", "y": "60", "frame": "5"}, "'frame' 5"),
                          ({"x": "180"}, "'y' is missing")):
        response = httpx.post(f"{server}/v1/exaggerate", files={"file": (
            "movie.tif", movie.read_bytes())}, data={"pixel_size_um": "0.65", **fields})
        assert response.status_code == 422 and words in response.json()["detail"], fields


def tiff_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, frames, photometric="minisblack")
    return buffer.getvalue()


def pickled_npy() -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    ("/v1/classify", {"json": {"crops_npy": "!!not base64"}}, 422, "crops_npy"),
    ("/v1/classify", {"json": {"crops_npy": pickled_npy()}}, 422, "crops_npy"),
    # (route, keyword arguments for httpx.post, expected status, words in the detail)
    ("/v1/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("/v1/classify", {"json": {"crops": [[[0.5] * 10] * 10]}}, 422, "the model takes 64x64"),
    ("/v1/classify", {"json": {"nothing": 1}}, 422, "missing field 'crops'"),
    ("/v1/classify", {"content": json.dumps({"crops": [[[float("nan")] * CROP] * CROP]}),
                      "headers": {"content-type": "application/json"}}, 422, "NaN"),
    ("/v1/classify", {"json": {"crops": [[["a"] * CROP] * CROP]}}, 422, "numbers"),
    # Outside [0, 1]: a raw window, and this one holds nothing.
    ("/v1/classify", {"json": {"crops": [[[2.0] * CROP] * CROP]}}, 422, "constant"),
    ("/v1/classify", {"json": {"crops": [[[2.0] * CROP] * CROP], "normalised": True}}, 422,
     "[0, 1]"),
    ("/v1/classify", {"json": {"crops": [[[0.5] * CROP] * CROP], "normalised": "maybe"}}, 422,
     "'normalised'"),
    ("/v1/classify", {"files": {"file": ("x.tif", b"not a tiff at all")}}, 422, "x.tif"),
    ("/v1/classify", {"files": {"file": ("m.tif", tiff_bytes(np.zeros((2, 8, 8), np.uint16)))},
                      "data": {"frame_interval_s": "-5"}}, 422, "'frame_interval_s'"),
    ("/v1/classify", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, ""),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * CROP] * CROP, "sigmas": [1] * 100}}, 413,
     "limit"),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * CROP] * CROP, "sigmas": [1e9]}}, 422, "±"),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * CROP] * CROP, "sigmas": "x,y"}}, 422, "sigmas"),
    ("/v1/exaggerate", {"files": {"file": ("c.png", b"\x89PNG broken")}}, 422, "c.png"),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * 30] * 20}}, 422, "shape"),
    # What a hostile client can send, each once a 500.
    ("/v1/classify", {"content": '{"crops": ' + "[" * 10_000 + "]" * 10_000 + "}",
                      "headers": {"content-type": "application/json"}}, 422, "nested"),
    ("/v1/classify", {"content": '{"crops": [[[' + "9" * 4000 + "]]]}",
                      "headers": {"content-type": "application/json"}}, 422, "numbers"),
    ("/v1/classify", {"content": '{"crops": [[[' + "9" * 5000 + "]]]}",
                      "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ("/v1/exaggerate", {"content": '{"crop": ' + json.dumps([[0.5] * CROP] * CROP)
                        + ', "sigmas": [' + "9" * 4000 + "]}",
                        "headers": {"content-type": "application/json"}}, 422, "sigmas"),
    ("/v1/classify", {"json": {"crops_npy": npz_crops(np.zeros((2, CROP, CROP), np.float32))}},
     422, "npy"),
    ("/v1/classify", {"json": {"crops_npy": npy_bomb()}}, 413, "limit"),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * CROP] * CROP, "sigmas": {"1": 2, "3": 4}}},
     422, "sigmas"),
    ("/v1/classify", {"files": {"file": ("flat.tif", tiff_bytes(np.zeros((64, 64), np.uint16)))}},
     422, "constant"),
    ("/v1/exaggerate", {"json": {"crop": [[0.5] * CROP] * CROP, "method": "gradient"}}, 422,
     "'method' must be one of linear, latent-shift"),
]


def test_a_stored_movie_by_name_answers_as_its_upload(server, registry, stored):
    with LCHClient(server) as client:
        by_id = client.predict_movie("ward", "p00-m00")
        uploaded = client.classify(stored, pixel_size_um=PIXEL_SIZE_UM,
                                   frame_interval_s=FRAME_INTERVAL_S)
    # The same cells, cut and tracked as ingestion did; track ids are the store's.
    assert by_id["model_version"] == uploaded["model_version"] == "1"
    assert len(by_id["cells"]) == len(uploaded["cells"]) > 10
    assert len(by_id["tracks"]) == len(uploaded["tracks"]) > 1
    for key in ("frame", "centroid_y", "centroid_x"):
        assert [c[key] for c in by_id["cells"]] == pytest.approx([c[key] for c in
                                                                  uploaded["cells"]])
    np.testing.assert_allclose([c["p_high"] for c in by_id["cells"]],
                               [c["p_high"] for c in uploaded["cells"]], atol=1e-4)
    np.testing.assert_allclose(sorted(t["p_high"] for t in by_id["tracks"]),
                               sorted(t["p_high"] for t in uploaded["tracks"]), atol=1e-4)
    assert by_id["population"]["p_high"] == pytest.approx(uploaded["population"]["p_high"],
                                                          abs=1e-4)

    # A track exaggerated from the mean code of its frames: at s = 0, the track's P(high).
    track = by_id["tracks"][1]
    answer = LCHClient(server).exaggerate(cohort="ward", movie="p00-m00",
                                          track_id=track["track_id"], sigmas=[0, 2])
    assert answer["input"].startswith(f"track {track['track_id']} of movie p00-m00")
    assert answer["steps"][0]["p_high"] == pytest.approx(track["p_high"], abs=1e-4)
    one = LCHClient(server).exaggerate(cohort="ward", movie="p00-m00", cell=3, sigmas=[0])
    assert one["steps"][0]["p_high"] == pytest.approx(by_id["cells"][3]["p_high"], abs=1e-4)


STORED_BAD = [  # (body, status, words in the detail)
    ({"cohort": "nope", "movie": "p00-m00"}, 404, "'cohort'"),
    ({"cohort": "ward", "movie": "p09-m00"}, 404, "'movie'"),
    ({"cohort": "../ward", "movie": "p00-m00"}, 422, "'cohort' must be a name"),
    ({"cohort": "ward", "movie": "a/b"}, 422, "'movie' must be a name"),
    ({"cohort": "ward", "movie": ".."}, 422, "'movie' must be a name"),
    ({"cohort": "ward"}, 422, "missing field 'movie'"),
    ({"cohort": "ward", "movie": "p00-m00", "model": "7"}, 404, "'model'"),
    ({"cohort": "ward", "movie": "p00-m00", "model": "../1"}, 422, "'model'"),
]


@pytest.mark.parametrize(("body", "status", "words"), STORED_BAD)
def test_bad_names_are_refused_naming_the_field(server, stored, body, status, words):
    response = httpx.post(f"{server}/v1/classify", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"track_id": 99999}, 404, "'track_id' 99999"),
    ({"cell": 99999}, 404, "'cell' 99999"),
    ({"cell": -1}, 422, "'cell' must not be negative"),
    ({}, 422, "exactly one of 'track_id'"),
    ({"cell": 1, "track_id": 1}, 422, "exactly one of 'track_id'"),
])
def test_a_stored_cell_that_is_not_there_is_a_404(server, stored, body, status, words):
    response = httpx.post(f"{server}/v1/exaggerate", timeout=30,
                          json={"cohort": "ward", "movie": "p00-m00", **body})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_a_request_built_from_the_openapi_schema_alone_is_answered(server, stored):
    """What a generated client does: field names, content types and the answer's shape all from
    /openapi.json."""
    import re

    import jsonschema

    spec = httpx.get(f"{server}/openapi.json").json()
    operation = spec["paths"]["/v1/classify"]["post"]
    answer_schema = {**operation["responses"]["200"]["content"]["application/json"]["schema"],
                     "components": spec["components"]}
    content = operation["requestBody"]["content"]

    # JSON: the two name fields the schema gives a pattern, filled with the stored movie's ids.
    fields = content["application/json"]["schema"]["properties"]
    names = dict(zip(sorted(f for f, p in fields.items() if "pattern" in p),
                     ("ward", "p00-m00"), strict=True))
    assert set(names) == {"cohort", "movie"}
    for field, value in names.items():
        assert re.fullmatch(fields[field]["pattern"], value)
    response = httpx.post(f"{server}/v1/classify", json=names, timeout=60)
    assert response.status_code == 200, response.text
    jsonschema.Draft202012Validator(answer_schema).validate(response.json())
    assert response.json()["population"]["n_cells"] > 1

    # Multipart: the one binary field carries the movie, the numeric fields their values.
    form = content["multipart/form-data"]["schema"]["properties"]
    (file_field,) = [f for f, p in form.items() if p.get("format") == "binary"]
    numbers = {f: str(PIXEL_SIZE_UM if "pixel" in f else FRAME_INTERVAL_S)
               for f, p in form.items() if p.get("type") == "number"}
    response = httpx.post(f"{server}/v1/classify", data=numbers, timeout=60,
                          files={file_field: ("movie.tif", stored.read_bytes(), "image/tiff")})
    assert response.status_code == 200, response.text
    jsonschema.Draft202012Validator(answer_schema).validate(response.json())


def _latent_shift_cases(model: LCHModel, candidates: np.ndarray):
    """A crop Latent Shift can exaggerate under ``model``, and one it cannot (or None)."""
    from lch.exaggerate import latent_shifts

    follows = opposes = None
    for crop in candidates:
        z = model.encode(torch.from_numpy(crop)[None, None]).detach()
        try:
            latent_shifts(model, z, torch.tensor([1.0]))
            follows = crop if follows is None else follows
        except ValueError:
            opposes = crop if opposes is None else opposes
    assert follows is not None
    return follows, opposes


def test_each_request_names_its_model_version(server, registry):
    """Serve model multiplexing: a version or alias per request; the default stays the
    champion."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, "challenger", "2")
    batch = crops(6, seed=8)
    champion = LCHClient(server).model()["version"]
    for model, version in (("1", "1"), ("2", "2"), ("challenger", "2"), (None, champion),
                           ("champion", champion)):
        with LCHClient(server, model=model) as client:
            answer = client.classify(batch)
            assert answer["model_version"] == version
            np.testing.assert_allclose([c["p_high"] for c in answer["cells"]],
                                       expected_p(registry[version], batch), atol=1e-5)
            assert client.exaggerate(batch[0], [0])["model_version"] == version
            # Latent Shift where this version's re-encoded logit rises along its gradient (an
            # untrained AAE's does not everywhere: a clear 422 there).
            follows, opposes = _latent_shift_cases(registry[version], crops(12, seed=9))
            linear = client.exaggerate(follows, [-2, 2])
            shifted = client.exaggerate(follows, [-2, 2], method="latent-shift")
            assert (linear["method"], shifted["method"]) == ("linear", "latent-shift")
            for a, b in zip(linear["steps"], shifted["steps"], strict=True):
                assert a["p_high"] == pytest.approx(b["p_high"], abs=1e-4)  # same logit steps
            if opposes is not None:
                with pytest.raises(LCHClientError, match="Latent Shift cannot follow"):
                    client.exaggerate(opposes, [1], method="latent-shift")
            assert client.model()["version"] == version
    missing = httpx.get(f"{server}/v1/model", params={"model": "nobody"})
    assert missing.status_code == 404 and "'model'" in missing.json()["detail"]


@pytest.mark.parametrize(("route", "request_kwargs", "status", "words"), BAD_REQUESTS)
def test_bad_requests_get_4xx_with_a_message(server, route, request_kwargs, status, words):
    response = httpx.post(f"{server}{route}", timeout=30, **request_kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_limits_and_the_replicas_stay_healthy(server, registry):
    too_many = httpx.post(f"{server}/v1/classify", json={"crops": crops(MAX_CELLS + 1).tolist()},
                          timeout=60)
    assert too_many.status_code == 413 and str(MAX_CELLS) in too_many.json()["detail"]
    huge = httpx.post(f"{server}/v1/classify", content=b"0" * (MAX_BODY_BYTES + 1),
                      headers={"content-type": "application/json"}, timeout=60)
    assert huge.status_code == 413
    many = httpx.post(f"{server}/v1/exaggerate",
                      json={"crop": crops(1)[0].tolist(), "sigmas": [0] * (MAX_SIGMAS + 1)})
    assert many.status_code == 413
    with LCHClient(server) as client:
        assert client.health() == {"status": "ok"}
        assert client.classify(crops(2))["population"]["n_cells"] == 2


def test_bearer_token_guards_every_route_but_healthz(server, registry):
    secure = f"{server}/auth"
    assert httpx.get(f"{secure}/healthz").status_code == 200
    for method, route in (("get", "/v1/model"), ("post", "/v1/classify"),
                          ("post", "/v1/exaggerate")):
        response = httpx.request(method, f"{secure}{route}", json={})
        assert response.status_code == 401, route
        wrong = httpx.request(method, f"{secure}{route}", json={},
                              headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    with LCHClient(secure, token="s3cret") as client:
        assert client.model()["version"] == "1"
        assert client.classify(crops(2))["population"]["n_cells"] == 2
    with pytest.raises(LCHClientError) as info:
        LCHClient(secure, token="").model()
    assert info.value.status == 401


def test_promotion_gate_and_listing(registry):
    rows = {r.version: r for r in list_versions()}
    assert rows["1"].aliases == ("champion",) and rows["2"].metric == pytest.approx(0.95)
    assert rows["2"].cohorts == "test"
    with pytest.raises(ValueError, match="no version 99"):
        promote("99")


def test_cli_lists_models_and_classifies_through_the_endpoint(server, registry, tmp_path, capsys):
    from lch.pipelines.cli import main as lch_main

    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, synthetic_frame(), photometric="minisblack")
    assert lch_main(["classify", str(path), "--url", server,
                     "--pixel-size-um", str(PIXEL_SIZE_UM)]) == 0
    out = capsys.readouterr().out
    assert "metastatic" in out and "fewer than 20 cells" in out and "model version 1" in out
    assert lch_main(["models"]) == 0
    assert "champion" in capsys.readouterr().out
    assert lch_main(["models", "--json"]) == 0
    listed = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert "champion" in listed["1"]["aliases"] and "champion" not in listed["2"]["aliases"]
    assert listed["2"]["metric"] == pytest.approx(0.95)
    assert lch_main(["classify", str(path), "--url", server, "--json",
                     "--pixel-size-um", str(PIXEL_SIZE_UM)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"] == "1" and answer["population"]["call"] in ("high", "low")
    assert lch_main(["promote", "99"]) == 2
    assert lch_main(["classify", str(path), "--url", f"{server}/auth"]) == 1
    assert "401" in capsys.readouterr().err


def test_promotion_under_load_drops_nothing_then_rollback(server, registry):
    batch = crops(20, seed=5)
    expected = {v: expected_p(m, batch) for v, m in registry.items()}
    results, failures = [], []
    promoted, stop = threading.Event(), threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/v1/classify", json={"crops": batch.tolist()})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                answer = response.json()
                results.append((promoted.is_set(), answer["model_version"],
                                np.array([c["p_high"] for c in answer["cells"]])))

    def wait_for(condition, what: str) -> None:  # a bound on a stall, not a timing condition
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    # The load runs until the new version has answered 32 requests, however long that takes.
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client_loop) for _ in range(16)]
        try:
            wait_for(lambda: len(results) >= 32, "no answers under load")
            promoted.set()  # before: an answer recorded unset came before the promotion
            assert "→ version 2" in promote("2")
            wait_for(lambda: sum(v == "2" for _, v, _ in results) >= 32,
                     "the new champion was not picked up under load")
        finally:
            stop.set()
            for future in futures:
                future.result()

    assert not failures
    assert {v for _, v, _ in results} == {"1", "2"}
    assert {v for after, v, _ in results if not after} == {"1"}  # no version before its time
    for _, version, p in results:  # every answer is wholly one version's
        np.testing.assert_allclose(p, expected[version], atol=1e-5)
    deadline = time.monotonic() + 30
    while LCHClient(server).model()["version"] != "2":
        assert time.monotonic() < deadline, "the new champion was not picked up"
        time.sleep(0.5)

    with pytest.raises(PromotionRefused) as refused:
        promote("1")
    assert "0.900" in str(refused.value) and "0.950" in str(refused.value)
    assert "version 1" in promote("1", force=True)
    deadline = time.monotonic() + 30
    while LCHClient(server).model()["version"] != "1":
        assert time.monotonic() < deadline, "the rollback was not picked up"
        time.sleep(0.5)


BOMBS = [  # (route, file name, the bomb, words in the detail)
    ("/v1/exaggerate", "bomb.png", lambda: png_bomb(13000), "pixels"),  # past our crop limit
    ("/v1/exaggerate", "pillow.png", lambda: png_bomb(14000), "too large"),  # Pillow's limit
    ("/v1/exaggerate", "bomb.tif", lambda: tiff_bomb(60000), "pixels"),
    ("/v1/classify", "bomb.tif", lambda: tiff_bomb(60000), "pixels"),
]


@pytest.mark.parametrize(("route", "name", "bomb", "words"), BOMBS,
                         ids=[f"{r}:{n}" for r, n, _, _ in BOMBS])
def test_decompression_bombs_are_refused_from_their_headers(server, route, name, bomb, words):
    """A small file declaring a huge image is refused before decoding, while /healthz answers.
    The timeouts only guard against a stall (each bomb once took 14-120 s)."""
    health: list[int] = []
    done = threading.Event()

    def poll_health() -> None:
        with httpx.Client(base_url=server, timeout=5) as http:
            while not done.is_set():
                health.append(http.get("/healthz").status_code)
                time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    deadline = time.monotonic() + 10
    while not health and time.monotonic() < deadline:  # polling, before the bomb goes in
        time.sleep(0.01)
    try:
        response = httpx.post(f"{server}{route}", files={"file": (name, bomb())}, timeout=10)
    finally:
        done.set()
        poller.join()
    assert response.status_code == 413, response.text
    assert name in response.json()["detail"] and words in response.json()["detail"]
    assert health and set(health) == {200}


def test_docs_honour_the_token(server):
    secure = f"{server}/auth"
    for route in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{secure}{route}").status_code == 401, route
        with_token = httpx.get(f"{secure}{route}", headers={"Authorization": "Bearer s3cret"})
        assert with_token.status_code == 200, route
    page = httpx.get(f"{secure}/docs", headers={"Authorization": "Bearer s3cret"}).text
    assert "/auth/openapi.json" in page  # the description is fetched under the app's prefix
    assert httpx.get(f"{server}/openapi.json").status_code == 200  # no token set: open


def test_public_docs_flag_opens_only_the_description():
    from fastapi.testclient import TestClient

    from lch.serving.app import api

    api.state.token, api.state.public_docs = "t0k", True
    client = TestClient(api)
    assert client.get("/openapi.json").status_code == 200
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    api.state.public_docs = False
    assert client.get("/openapi.json").status_code == 401


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _title(process) -> str:
    """A process's name; a Ray worker's title without the method it runs at the moment.

    Ray retitles an actor's process ``ray::Class.method`` while a method runs, and the kernel's
    name of a process is cut at 15 characters.
    """
    import psutil

    try:
        title = (process.cmdline() or [""])[0].split(" ")[0]
    except psutil.Error:
        title = ""
    return title.split(".", 1)[0] if title.startswith("ray::") else process.name()


def _listeners() -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket listening in this process tree."""
    import psutil

    me = psutil.Process()
    names = {p.pid: _title(p) for p in [me, *me.children(recursive=True)]}
    return sorted({
        (names[c.pid], c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in names
    })


def _grpc_code_without_token(port: int):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return None


def test_ray_and_serve_listen_on_loopback_and_refuse_jobs_without_the_token(server, tmp_path):
    """ShadowRay (CVE-2023-48022): with LCH's Ray and Serve running, nothing listens beyond
    loopback but the Serve replicas' gRPC ports, which Ray 2.60 binds to [::] itself and which
    refuse calls without Ray's token; no port runs a job for a caller without the token."""
    import grpc

    listeners = _listeners()
    names = {name for name, _, _ in listeners}
    assert {"gcs_server", "raylet", "ray::ServeController", "ray::ProxyActor"} <= names
    outside = [(n, ip, port) for n, ip, port in listeners if ip not in LOOPBACK]
    for name, ip, port in outside:
        assert name.startswith("ray::ServeReplica"), (name, ip, port)
        assert _grpc_code_without_token(port) == grpc.StatusCode.UNAUTHENTICATED, (name, port)

    proof = tmp_path / "rce-proof.txt"
    job = {"entrypoint": f"id > {proof}"}
    deadline = time.monotonic() + 60
    while True:  # the agent registers its job routes a while after it starts listening (405 until)
        listeners = _listeners()
        refused = []
        for name, _, port in listeners:
            for path in ("/api/job_agent/jobs/", "/api/jobs/"):
                for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                    try:
                        status = httpx.post(f"http://127.0.0.1:{port}{path}", json=job,
                                            headers=headers, timeout=5).status_code
                    except httpx.HTTPError:
                        continue  # not HTTP (gRPC, Redis-like protocols)
                    assert not 200 <= status < 300 or name == "ray::ProxyActor", (name, port, path)
                    refused += [status] if name == "ray::DashboardAgent" else []
        if 401 in refused or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert 401 in refused, refused  # the job agent is there and asks for the token
    time.sleep(1)
    assert not proof.exists()


def test_replica_loss_is_a_503_with_retry_after_never_a_500(server, ray_session):
    """Every Classifier replica killed at once: requests meanwhile get 200 (queued until Serve
    restarts one) or 503 with Retry-After, and the service comes back."""
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::lch#Classifier#")]
    assert replicas
    batch = {"crops": crops(4).tolist()}
    for actor in replicas:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda _: httpx.post(f"{server}/v1/classify", json=batch, timeout=120), range(16)
        ))
    for response in responses:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.headers["Retry-After"].isdigit()
            assert "retry" in response.json()["detail"]
    deadline = time.monotonic() + 120
    while httpx.post(f"{server}/v1/classify", json=batch, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the Classifier did not come back"
        time.sleep(1)
