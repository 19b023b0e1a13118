"""The per-cohort lock: one writer at a time, and a dead writer's lock taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from lch.cohort_lock import LOCK_NAME, CohortLocked, cohort_lock


def write_lock(folder, **owner) -> None:
    fields = {"id": "other", "host": socket.gethostname(), "pid": os.getpid(),
              "command": "lch ingest", "since": "2026-12-01T00:00:00+00:00",
              "expires": time.time() + 3600} | owner
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(fields))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_is_held_inside_and_released_after(tmp_path):
    folder = tmp_path / "cohort"
    with cohort_lock(folder, "lch ingest") as owner:
        held = json.loads((folder / LOCK_NAME).read_text())
        assert held["id"] == owner.id and held["pid"] == os.getpid()
        assert held["expires"] > time.time()
        with pytest.raises(CohortLocked) as refused, cohort_lock(folder, "lch segment"):
            pass
        assert "'lch ingest'" in str(refused.value) and str(os.getpid()) in str(refused.value)
        assert str(folder) in str(refused.value)
    assert not (folder / LOCK_NAME).exists()


def test_only_one_of_many_racing_takers_wins(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    start, outcomes = threading.Barrier(8), []

    def take() -> None:
        start.wait()
        try:
            with cohort_lock(folder, "lch ingest"):
                outcomes.append("held")
                time.sleep(0.5)
        except CohortLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * 7


@pytest.mark.parametrize(
    "owner",
    [
        {"pid": "dead"},  # its process is gone from this host
        {"host": "elsewhere", "expires": 0.0},  # another machine's, not renewed in time
    ],
    ids=["dead-pid", "expired"],
)
def test_a_gone_owners_lock_is_taken_over(tmp_path, owner):
    folder = tmp_path / "cohort"
    write_lock(folder, **{k: dead_pid() if v == "dead" else v for k, v in owner.items()})
    with cohort_lock(folder, "lch ingest") as me:
        assert json.loads((folder / LOCK_NAME).read_text())["id"] == me.id


def test_a_torn_lock_file_is_taken_over(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / LOCK_NAME).write_text('{"id": "x", "ho')
    with cohort_lock(folder, "lch ingest") as me:
        assert json.loads((folder / LOCK_NAME).read_text())["id"] == me.id


def test_a_live_owner_on_another_host_is_respected(tmp_path):
    folder = tmp_path / "cohort"
    write_lock(folder, host="elsewhere", pid=1)
    with pytest.raises(CohortLocked, match="on elsewhere"), cohort_lock(folder, "lch ingest"):
        pass
    assert json.loads((folder / LOCK_NAME).read_text())["id"] == "other"


def test_the_holder_renews_its_lock(tmp_path):
    folder = tmp_path / "cohort"
    with cohort_lock(folder, "lch ingest", ttl_s=0.3):
        first = json.loads((folder / LOCK_NAME).read_text())["expires"]
        time.sleep(0.6)  # twice the lifetime: only renewals keep it valid
        renewed = json.loads((folder / LOCK_NAME).read_text())["expires"]
        assert renewed > first and renewed > time.time()
