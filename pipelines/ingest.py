"""`lch ingest`: a cohort's movies → OME-Zarr, as Ray tasks (stage A), locally or as a Ray Job.

The data root may be a local folder or an object-store URL (``LCH_HOME=s3://bucket/prefix``); the
source movies are always read from a (shared) file system.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray
import yaml
from tqdm.auto import tqdm

from lch.cohort_lock import cohort_lock
from lch.conversion import ConversionResult, convert_movie, remove_leftovers
from lch.manifest import Manifest, MovieEntry, load_manifest
from lch.movie_io import DEFAULT_MAX_FRAME_PIXELS, MovieError, Selection, position_names
from lch.paths import Location, cohort_dir, is_url, join, lch_home, movie_store, movies_dir
from lch.pipelines.runtime import init_ray, require_token_auth
from lch.storage import check_root, filesystem, storage_options_from_env

MANIFEST_NAME = "manifest.yaml"
# Passed on to a submitted job when set here. Not the S3 secrets: a job's runtime_env is shown
# by the dashboard, and the cluster's pods get credentials their own way (secret, role).
JOB_ENV = ("LCH_HOME", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION",
           "AWS_REGION")


@dataclass
class IngestSummary:
    """The outcome of one ingestion: one result per manifest entry."""

    cohort: str
    data_root: Location
    results: list[ConversionResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Count the results of ``status`` ("ok", "skipped" or "failed")."""
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[ConversionResult]:
        """The results of the movies that failed."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def frames(self) -> int:
        """Total frames over all results."""
        return sum(r.frames for r in self.results)

    def format(self) -> str:
        """Write a human-readable summary: counts, volume, time, location, every failure."""
        source_mb = sum(r.source_bytes for r in self.results if r.status == "ok") / 1e6
        stored_mb = sum(r.stored_bytes for r in self.results if r.status != "failed") / 1e6
        lines = [
            f"cohort {self.cohort}: {len(self.results)} movies, {self.count('ok')} converted, "
            f"{self.count('skipped')} already stored, {self.count('failed')} failed",
            f"  frames: {self.frames}   converted: {source_mb:.1f} MB in {self.seconds:.1f} s"
            f" ({source_mb / max(self.seconds, 1e-9):.1f} MB/s)   stored: {stored_mb:.1f} MB",
            f"  data: {cohort_dir(self.cohort, self.data_root)}",
        ]
        lines += [f"  FAILED {r.movie}: {r.message}" for r in self.failed]
        return "\n".join(lines)


def _provenance(manifest: Manifest, entry: MovieEntry, movie: str) -> dict:
    return {
        "cohort": manifest.cohort,
        "movie": movie,
        "patient": entry.patient,
        "cell_line": entry.line,
        "label": entry.label,
    }


def _stored_movies(
    manifest: Manifest, entry: MovieEntry
) -> list[tuple[str, Selection]] | ConversionResult:
    """Return the stored movies an entry makes, one per selected position of its file.

    Or the failure that stops it (an unreadable file, a label movie for several positions).
    """
    try:
        positions = position_names(manifest.source_path(entry))
        return entry.stored_movies(positions)
    except (MovieError, ValueError) as exc:
        return ConversionResult(entry.id, "failed", message=str(exc))


@ray.remote(num_cpus=1, max_retries=3)
def _convert_task(
    source: str, dest: str, movie: str, provenance: dict, px, dt, storage_options: dict,
    max_frame_pixels: int | None, labels: str | None, selection: Selection,
) -> ConversionResult:
    # max_retries covers a worker or node dying; user errors come back as "failed" results.
    return convert_movie(
        source, dest, movie=movie, provenance=provenance, pixel_size_um=px, frame_interval_s=dt,
        storage_options=storage_options, max_frame_pixels=max_frame_pixels, labels=labels,
        selection=selection,
    )


def _gather(refs: list, progress: bool) -> list[ConversionResult]:
    results, pending = [], list(refs)
    with tqdm(total=len(refs), desc="movies → OME-Zarr", unit="movie", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
            bar.update(len(done))
    return results


def _store_manifest(
    manifest: Manifest, results: list[ConversionResult], stored_as: dict[str, tuple[str, int]],
    home: Location, options: dict,
) -> None:
    """Record the movies now stored, merged with those stored by earlier runs.

    The write is atomic: a rename locally, a single-object write on an object store.
    ``stored_as`` maps a stored movie to its manifest entry's id and its position in the file.
    """
    fs, target = filesystem(join(cohort_dir(manifest.cohort, home), MANIFEST_NAME), options)
    stored = {}
    if fs.exists(target):
        text = fs.cat_file(target).decode()
        stored = {m["id"]: m for m in (yaml.safe_load(text) or {}).get("movies", [])}
    entries = {entry["id"]: entry for entry in manifest.to_dict()["movies"]}
    for result in results:
        if result.status in ("ok", "skipped"):
            entry_id, position = stored_as[result.movie]
            stored[result.movie] = {**entries[entry_id], "id": result.movie,
                                    "position": position}
    text = yaml.safe_dump({"cohort": manifest.cohort, "movies": list(stored.values())})
    if is_url(home):
        fs.pipe_file(target, text.encode())
        return
    tmp = Path(target).with_name(f".{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, target)


def convert_cohort(
    manifest_path: str | Path,
    *,
    home: Location | None = None,
    progress: bool = True,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
) -> IngestSummary:
    """Stage A: validate the manifest and convert every movie to OME-Zarr in parallel Ray tasks.

    Each selected position of a file is one stored movie (:meth:`lch.manifest.MovieEntry.
    stored_movies`); the driver opens each file's metadata to list its positions.

    A movie whose entry names ``labels`` lands with that label movie as its NGFF ``labels``
    group, or fails (with a message naming the label file) if it does not fit the movie.
    The cohort's lock (:func:`lch.cohort_lock.cohort_lock`) is held throughout; a movie whose
    frames exceed ``max_frame_pixels`` fails before any pixel is decoded.

    Raises
    ------
    lch.cohort_lock.CohortLocked
        If another live run is writing the cohort.
    lch.manifest.ManifestError
        If the manifest as a whole is unusable; bad single entries are reported as failures.
    lch.storage.StorageError
        If the data root is an object store that cannot be reached or has no such bucket.
    """
    manifest = load_manifest(manifest_path)
    home = home or lch_home()
    options = storage_options_from_env(home)
    check_root(home, options)
    started = time.perf_counter()
    folder = movies_dir(manifest.cohort, home)
    if not is_url(folder):  # an object store has no folders to create
        folder.mkdir(parents=True, exist_ok=True)
    with cohort_lock(cohort_dir(manifest.cohort, home), "lch ingest", options):
        # Holding the lock, every write-aside store here is a dead run's.
        remove_leftovers(folder, options)
        init_ray()
        refs, results, stored_as = [], [], {}
        for entry in manifest.movies:
            movies = _stored_movies(manifest, entry)
            if isinstance(movies, ConversionResult):
                results.append(movies)
                continue
            for movie, selection in movies:
                stored_as[movie] = (entry.id, selection.position)
                refs.append(_convert_task.remote(
                    str(manifest.source_path(entry)),
                    str(movie_store(manifest.cohort, movie, home)),
                    movie,
                    _provenance(manifest, entry, movie),
                    entry.pixel_size_um,
                    entry.frame_interval_s,
                    options,
                    max_frame_pixels,
                    str(manifest.labels_path(entry)) if entry.labels else None,
                    selection,
                ))
        results += _gather(refs, progress)
        # An attempt lost with its node (then retried elsewhere) leaves its write-aside store.
        remove_leftovers(folder, options)
        results += [
            ConversionResult(e.movie, "failed", message=e.message) for e in manifest.errors
        ]
        _store_manifest(manifest, results, stored_as, home, options)
    return IngestSummary(manifest.cohort, home, results, time.perf_counter() - started)


def _submit(client, *, wait_s: float = 120.0, **job) -> str:
    """Submit a job, waiting while a freshly started head's job agent is not up yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def submit_ingest_job(manifest_path: str | Path, address: str, *, extra_args: list[str]) -> int:
    """Run ``lch ingest`` on the cluster at ``address`` through the Ray Jobs API.

    The manifest and the movies must be readable at the same absolute paths on the cluster
    (a shared file system). ``LCH_HOME`` (and the S3 endpoint and region of :data:`JOB_ENV`) are
    passed on only if set here, as written (a local default would mean nothing on the cluster).
    Logs are followed until the job ends. The Jobs API is called with Ray's token
    authentication (:func:`lch.pipelines.runtime.require_token_auth`).
    Returns 0 if the job succeeded.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    require_token_auth(address)
    manifest_path = Path(manifest_path).resolve()
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["lch", "ingest", str(manifest_path), *extra_args])
    job_id = _submit(
        client,
        entrypoint=entrypoint,
        runtime_env={"env_vars": {k: os.environ[k] for k in JOB_ENV if k in os.environ}},
        submission_id=f"lch-ingest-{uuid.uuid4().hex[:12]}",
    )
    print(f"submitted Ray job {job_id} to {address}: {entrypoint}", flush=True)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"Ray job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
