"""Cluster mode on one machine: ingestion that loses a node, segmentation and training, each on
a multi-node Ray cluster (Ray's own ``ray.cluster_utils.Cluster``).

Run by tests/test_cluster.py in a process of its own (the test session's Ray instance and a
cluster cannot share one process): ``python tests/cluster_scenario.py WORKDIR``. The data root
is ``WORKDIR/home``; what happened where (node of every task attempt and actor, the summaries)
is written to ``WORKDIR/report.json`` for the tests to check against the data on disk.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

# Task states reach the state API within a fraction of a second, not the default 1 s.
os.environ["RAY_task_events_report_interval_ms"] = "100"
# The GCS declares a crashed node dead after 3 failed health checks 1 s apart (default 5 x 3 s:
# up to 15 s of waiting on the lost task). A check of a live node still has 10 s to answer.
os.environ["RAY_health_check_period_ms"] = "1000"
os.environ["RAY_health_check_failure_threshold"] = "3"
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import lch.pipelines  # noqa: E402, F401, I001  (first: local Ray on loopback)

import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from ray.util.state import list_actors, list_tasks  # noqa: E402

from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.runtime import init_ray, local_cluster  # noqa: E402
from lch.pipelines.segment import segment_cohort  # noqa: E402
from lch.pipelines.train import TrainSettings, train  # noqa: E402
from lch.synth import make_cohort  # noqa: E402

from helpers import TINY_TRAINING  # noqa: E402

COHORT = "multi"
PATIENTS, MOVIES_PER_PATIENT, FRAMES, SIZE = 4, 4, 8, (256, 256)
WAIT_S = 300


def convert_attempts(address: str) -> list:
    """Every attempt of a conversion task so far (one entry per attempt)."""
    return list_tasks(address=address, filters=[("name", "=", "_convert_task")], limit=1000)


def _workers_of(node) -> dict[int, str]:
    """The worker processes of a node (children of its raylet) and their titles: Ray titles a
    worker ``ray::<task>`` while it runs a task and ``ray::IDLE`` between tasks."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    workers = {}
    for entry in Path("/proc").iterdir():
        try:
            # The command name may hold spaces and parentheses: split after the last ")".
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == raylet:
                workers[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that just ended
    return workers


def crash(cluster, node) -> None:
    """Kill a node as a power cut would: its workers mid-task, then its Ray processes.

    ``remove_node`` alone stops the raylet, but a worker notices only later and may still
    finish its task and hand the result to its owner directly.
    """
    for pid in _workers_of(node):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)


def _reading_a_movie(node, raw: Path) -> bool:
    """True while a worker of ``node`` has a source movie open: its conversion has not
    committed yet (the source is read to the end before the store is renamed into place)."""
    prefix = f"{raw.resolve()}/"
    for pid in _workers_of(node):
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return True
        except OSError:
            continue  # the worker, or one of its files, just went away
    return False


def _crash_mid_ingestion(cluster, victim, running, raw: Path, movies: Path) -> int:
    """Crash ``victim`` in the middle of a conversion, once movies have started to land.

    Returns the number of movies stored at that moment.
    """
    while running.is_alive():
        # Checked right before the kill: open files tell at once (the state API lags).
        stored = len(list(movies.glob("*.ome.zarr")))
        if stored >= 2 and _reading_a_movie(victim, raw):
            crash(cluster, victim)
            return stored
        time.sleep(0.002)
    raise RuntimeError("ingestion ended before the node could be crashed")


def _settled_attempts(address: str, movies: int) -> list:
    """The attempts once every task's last attempt is reported finished."""
    deadline = time.monotonic() + 60
    while True:
        attempts = convert_attempts(address)
        if sum(t.state == "FINISHED" for t in attempts) >= movies:
            return attempts
        if time.monotonic() > deadline:
            raise TimeoutError(f"state API: {attempts}")
        time.sleep(0.2)


@ray.remote(num_cpus=1)
def _ready() -> str:
    return ray.get_runtime_context().get_node_id()


def warm_up(nodes) -> None:
    """Start a worker process on each node, so that both nodes take movies from the start
    (a node's first worker takes a few seconds, longer than a small cohort's conversion)."""
    pinned = [_ready.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, False))
              for n in nodes]
    ids = ray.get([task.remote() for task in pinned])
    assert ids == [n.node_id for n in nodes], ids


def ingest_losing_a_node(cluster, manifest: Path, names: dict) -> dict:
    """Convert the cohort in a thread while the main thread kills one worker node mid-way."""
    victim = next(n for n in cluster.worker_nodes if names[n.node_id] == "victim")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = convert_cohort(manifest, progress=False)
        except BaseException as exc:  # reported, not swallowed: the main thread re-raises
            outcome["error"] = exc

    warm_up(cluster.worker_nodes)
    worker = threading.Thread(target=run)
    worker.start()
    movies = Path(os.environ["LCH_HOME"]) / "cohorts" / COHORT / "movies"
    stored = _crash_mid_ingestion(cluster, victim, worker, manifest.parent / "raw", movies)
    worker.join(WAIT_S)
    if "error" in outcome or worker.is_alive():
        raise RuntimeError(f"ingestion did not complete: {outcome.get('error')}")
    summary = outcome["summary"]
    attempts = _settled_attempts(cluster.address, len(summary.results))
    return {
        "stored_at_crash": stored,
        "results": {r.movie: r.status for r in summary.results},
        "attempts": [
            {"task": t.task_id, "attempt": t.attempt_number, "state": t.state,
             "node": names.get(t.node_id, t.node_id), "error": t.error_type}
            for t in attempts
        ],
    }


def actor_nodes(address: str, class_part: str, names: dict) -> list[str]:
    """Node of every actor (alive or not) whose class name contains ``class_part``."""
    actors = list_actors(address=address, limit=1000, detail=True)
    return [names.get(a.node_id, a.node_id) for a in actors if class_part in a.class_name]


def main(work: Path) -> None:
    home = work / "home"
    os.environ["LCH_HOME"] = str(home)
    seconds, started = {}, time.perf_counter()

    def lap(phase: str) -> None:
        seconds[phase] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    manifest = make_cohort(
        work / "source", name=COHORT, patients=PATIENTS, movies_per_patient=MOVIES_PER_PATIENT,
        frames=FRAMES, size=SIZE, seed=11, look="plain",
    )
    report: dict = {"seconds": seconds}
    lap("synthetic cohort")
    with local_cluster(workers=2, dashboard=True) as cluster:
        init_ray(cluster.address)
        lap("cluster start")
        survivor, victim = sorted(cluster.worker_nodes, key=lambda n: n.node_id)
        names = {cluster.head_node.node_id: "head", survivor.node_id: "survivor",
                 victim.node_id: "victim"}
        report["ingest"] = ingest_losing_a_node(cluster, manifest, names)
        lap("ingestion")

        # A replacement node joins (as an autoscaler would add one); stage B spreads over it.
        replacement = cluster.add_node(num_cpus=1, object_store_memory=150 << 20)
        cluster.wait_for_nodes()
        names[replacement.node_id] = "replacement"
        segmented = segment_cohort(COHORT, progress=False)
        report["segment"] = {
            "frames": segmented.frames, "cells_kept": segmented.cells_kept,
            "movies_failed": segmented.movies_failed, "frames_skipped": segmented.frames_skipped,
            "actors": actor_nodes(cluster.address, "FrameSegmenter", names),
        }
        lap("segmentation")

        # One CPU per node, half a CPU per worker: PACK would put both workers on one node.
        trained = train(TrainSettings(cohorts=(COHORT,), placement_strategy="SPREAD",
                                      **TINY_TRAINING))
        report["train"] = {
            "run_id": trained.run_id, "model_version": trained.model_version,
            "workers": actor_nodes(cluster.address, "RayTrainWorker", names),
        }
        report["nodes"] = {name: node for node, name in names.items()}
        lap("training")
    assert not ray.is_initialized()
    lap("shutdown")
    print(f"seconds: {seconds}", file=sys.stderr)
    (work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
