"""`lch ingest` stage A on a real local Ray: bad-input matrix, idempotency, CLI, Jobs API."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from lch.omezarr import open_labels, open_movie, read_provenance
from lch.paths import cohort_dir, movie_store
from lch.pipelines.cli import main as lch_main
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.runtime import free_port

from bombs import tiff_bomb
from helpers import stop_session
from movies import entry, random_movie, write_manifest, write_tiff
from real_cells import REAL

BAD_INPUTS = {
    # movie id: (how the file is made, words the error must contain)
    "missing": (None, "file not found"),
    "not-tiff": ("text", "not a readable TIFF"),
    "truncated": ("truncated", "truncated"),
    "rgb": ("rgb", "RGB"),
    "four-d": ("4d", "4-D"),
    "empty": ("empty", "empty movie"),
    "has-nan": ("nan", "NaN"),
    "passwd": ("passwd", "not a readable TIFF"),
    "frame-bomb": ("bomb", "exceed the limit"),
}


def make_bad(kind: str | None, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind is None:
        return
    if kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        write_tiff(path, random_movie(frames=10))
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "rgb":
        tifffile.imwrite(path, np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb")
    elif kind == "4d":
        tifffile.imwrite(
            path, np.zeros((3, 4, 16, 16), np.uint16), imagej=True, metadata={"axes": "TZYX"}
        )
    elif kind == "empty":
        tifffile.imwrite(path, np.zeros((0, 16, 16), np.uint16))
    elif kind == "passwd":  # what a manifest naming /etc/passwd would point at
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "bomb":  # 3.6 MB declaring one 60000 x 60000 frame
        path.write_bytes(tiff_bomb(60000))
    elif kind == "nan":
        movie = np.ones((4, 16, 16), np.float32)
        movie[2, 3, 3] = np.nan
        write_tiff(path, movie)


@pytest.fixture
def mixed_cohort(tmp_path):
    """Two good movies, every kind of bad file, a duplicate id and an invalid entry."""
    raw = tmp_path / "raw"
    good = {f"good-{i}": random_movie(frames=5 + i, seed=i) for i in range(2)}
    movies = []
    for movie_id, data in good.items():
        write_tiff(raw / f"{movie_id}.tif", data)
        movies.append(entry(movie_id, f"raw/{movie_id}.tif"))
    for movie_id, (kind, _) in BAD_INPUTS.items():
        make_bad(kind, raw / f"{movie_id}.tif")
        movies.append(entry(movie_id, f"raw/{movie_id}.tif"))
    movies += [entry("twin", "raw/good-0.tif"), entry("twin", "raw/good-1.tif")]
    movies.append({"id": "no-patient", "path": "raw/good-0.tif", "label": "low"})
    return write_manifest(tmp_path, "mixed", movies), good


def test_bad_movies_fail_alone_with_clear_messages(ray_session, lch_home, mixed_cohort):
    manifest, good = mixed_cohort
    entries = yaml.safe_load(manifest.read_text())["movies"]
    summary = convert_cohort(manifest, progress=False)

    status = {r.movie: r for r in summary.results}
    for movie_id, data in good.items():
        assert status[movie_id].status == "ok"
        np.testing.assert_array_equal(open_movie(movie_store("mixed", movie_id))[:, 0], data)
    for movie_id, (_, words) in BAD_INPUTS.items():
        result = status[movie_id]
        assert result.status == "failed", movie_id
        assert words in result.message and f"{movie_id}.tif" in result.message, result.message
        assert "root:x" not in result.message  # never an echo of the file's bytes
        assert not movie_store("mixed", movie_id).exists()
    assert "appears 2 times" in status["twin"].message
    assert f"movies[{len(entries) - 1}].patient" in status["no-patient"].message
    assert summary.count("ok") == 2 and len(summary.failed) == len(BAD_INPUTS) + 2
    text = summary.format()
    assert "2 converted" in text and "FAILED truncated" in text

    stored = yaml.safe_load((cohort_dir("mixed") / "manifest.yaml").read_text())
    assert sorted(m["id"] for m in stored["movies"]) == sorted(good)
    movies = cohort_dir("mixed") / "movies"
    assert sorted(p.name for p in movies.iterdir()) == [f"{m}.ome.zarr" for m in sorted(good)]


BAD_LABELS = {
    # movie id: (the label movie, words its error must contain)
    "frames": (lambda good: good[:3], "3 frames of 48×40, the movie has 4 frames of 48×40"),
    "size": (lambda good: good[:, :32], "4 frames of 32×40, the movie has 4 frames of 48×40"),
    "float": (lambda good: good.astype(np.float32), "floating-point pixels"),
    "negative": (lambda good: good.astype(np.int32) - 1, "frame 0 has negative labels"),
    "missing": (None, "file not found"),
}


def test_label_movies_are_checked_per_movie_and_the_other_movies_land(
    ray_session, lch_home, tmp_path
):
    raw = tmp_path / "raw"
    data = random_movie(frames=4, height=48, width=40, seed=1)
    write_tiff(raw / "movie.tif", data)
    good = np.zeros(data.shape, np.uint16)
    good[:, 10:30, 8:30] = 7
    write_tiff(raw / "good_labels.tif", good)
    movies = [dict(entry("good", "raw/movie.tif"), labels="raw/good_labels.tif"),
              entry("plain", "raw/movie.tif")]
    for movie_id, (make, _) in BAD_LABELS.items():
        if make is not None:
            write_tiff(raw / f"{movie_id}_labels.tif", make(good))
        movies.append(dict(entry(movie_id, "raw/movie.tif"), labels=f"raw/{movie_id}_labels.tif"))
    png = sorted(REAL.glob("*.png"))[0]  # an 8-bit PNG frame of the paper's cells
    movies.append(entry("png-frame", str(png)))
    manifest = write_manifest(tmp_path, "byo", movies)

    summary = convert_cohort(manifest, progress=False)

    status = {r.movie: r for r in summary.results}
    assert status["good"].status == status["plain"].status == "ok"
    np.testing.assert_array_equal(open_labels(movie_store("byo", "good"))[:, 0], good)
    assert open_labels(movie_store("byo", "plain")) is None
    for movie_id, (_, words) in BAD_LABELS.items():
        message = status[movie_id].message
        assert status[movie_id].status == "failed", movie_id
        assert f"{movie_id}_labels.tif" in message and words in message, message
        assert not movie_store("byo", movie_id).exists()
    assert status["png-frame"].status == "failed"
    assert status["png-frame"].message.startswith(f"{png}: a PNG image, not a TIFF movie")
    text = summary.format()
    assert "2 converted" in text and "FAILED size:" in text and "48×40" in text

    stored = yaml.safe_load((cohort_dir("byo") / "manifest.yaml").read_text())["movies"]
    assert {m["id"]: m.get("labels") for m in stored} == {
        "good": str(raw / "good_labels.tif"), "plain": None,
    }


def test_reingest_is_a_noop_and_the_cli_exit_status_reports_failures(
    ray_session, lch_home, mixed_cohort, capsys
):
    manifest, good = mixed_cohort
    assert lch_main(["ingest", str(manifest), "--quiet", "--no-segment"]) == 1
    first = capsys.readouterr().out
    assert "2 converted" in first and "FAILED rgb" in first
    stamps = {m: (movie_store("mixed", m) / "zarr.json").stat().st_mtime_ns for m in good}
    hashes = {m: read_provenance(movie_store("mixed", m))["source_sha256"] for m in good}

    assert lch_main(["ingest", str(manifest), "--quiet", "--no-segment"]) == 1
    second = capsys.readouterr().out
    assert "0 converted, 2 already stored" in second
    for m in good:
        assert (movie_store("mixed", m) / "zarr.json").stat().st_mtime_ns == stamps[m]
        assert read_provenance(movie_store("mixed", m))["source_sha256"] == hashes[m]


def test_manifest_error_exits_2_and_names_the_file(lch_home, tmp_path, capsys):
    bad = tmp_path / "cohort.yaml"
    bad.write_text("cohort: c1\nmovies: {not: a list}\n")
    assert lch_main(["ingest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "movies" in err


def test_all_good_cohort_exits_0(ray_session, lch_home, tmp_path, capsys):
    write_tiff(tmp_path / "a.tif", random_movie(frames=3))
    manifest = write_manifest(tmp_path, "clean", [entry("a", "a.tif")])
    assert lch_main(["ingest", str(manifest), "--quiet", "--no-segment"]) == 0
    assert "1 converted" in capsys.readouterr().out


@pytest.fixture
def ray_head():
    """A separate single-node Ray cluster on 127.0.0.1 with the dashboard (Jobs API)."""
    dashboard = free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `lch` for the job
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="lchhead", dir="/tmp")
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
        "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        # The agents' default ports may be held by another Ray on this machine (the test
        # session's own): the head's job agent would then never come up.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        # Ready means the job agent takes a job: the dashboard answers well before that.
        deadline = time.monotonic() + 240
        while True:
            try:
                client = JobSubmissionClient(address)
                job = client.submit_job(entrypoint="true")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        while not client.get_job_status(job).is_terminal():
            assert time.monotonic() < deadline, "the warm-up job did not finish"
            time.sleep(0.5)
        yield address, env
    finally:
        # `ray start --block` takes 30 s to act on SIGTERM; its processes are ours to kill.
        stop_session(proc, grace=3)


@pytest.mark.slow
def test_ingest_as_a_ray_job_through_the_jobs_api(ray_head, lch_home, tmp_path):
    address, env = ray_head
    data = random_movie(frames=4, seed=7)
    write_tiff(tmp_path / "a.tif", data)
    make_bad("text", tmp_path / "b.tif")
    manifest = write_manifest(tmp_path, "remote", [entry("a", "a.tif"), entry("b", "b.tif")])

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lch"), "ingest", str(manifest), "--address", address],
        env={**env, "LCH_HOME": str(lch_home)}, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "submitted Ray job" in out, out
    assert "1 converted" in out and "FAILED b" in out, out
    assert proc.returncode == 1, out  # one movie failed, so the job failed
    np.testing.assert_array_equal(open_movie(movie_store("remote", "a", lch_home))[:, 0], data)


@pytest.mark.slow
def test_two_concurrent_ingests_of_one_cohort_leave_every_store_whole(lch_home, tmp_path):
    """Two `lch ingest` runs started together: one holds the cohort's lock, the other is refused
    by name (or, started later, finds everything stored); every store equals its source."""
    movies = {f"m{i}": random_movie(frames=12, height=256, width=256, seed=i) for i in range(8)}
    for movie_id, data in movies.items():
        write_tiff(tmp_path / "raw" / f"{movie_id}.tif", data)
    manifest = write_manifest(tmp_path, "race",
                              [entry(m, f"raw/{m}.tif") for m in movies])
    command = [str(Path(sys.executable).parent / "lch"), "ingest", str(manifest), "--quiet",
               "--no-segment"]
    env = {**os.environ, "LCH_HOME": str(lch_home)}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outcomes = [(run.wait(timeout=300), *run.communicate()) for run in runs]

    assert 0 in [code for code, _, _ in outcomes], outcomes
    for code, out, err in outcomes:
        assert code in (0, 2), (out, err)
        if code == 2:
            assert "is writing this cohort" in err and "lch ingest" in err, err
        else:
            assert "0 failed" in out, out
    for movie_id, data in movies.items():
        np.testing.assert_array_equal(open_movie(movie_store("race", movie_id))[:, 0], data)
    folder = cohort_dir("race")
    assert [p.name for p in folder.rglob(".*")] == []  # no lock, no write-aside leftovers


def test_jobs_submission_without_the_clusters_token_stops_with_a_clear_error(
    lch_home, tmp_path, monkeypatch, capsys
):
    write_tiff(tmp_path / "a.tif", random_movie(frames=2))
    manifest = write_manifest(tmp_path, "remote", [entry("a", "a.tif")])
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    address = f"http://127.0.0.1:{free_port()}"
    assert lch_main(["ingest", str(manifest), "--address", address]) == 2
    err = capsys.readouterr().err
    assert address in err and "RAY_AUTH_TOKEN" in err
