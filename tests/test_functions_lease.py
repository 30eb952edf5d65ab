"""Two `cortex serve` processes on one database never run two runtimes for one project: the lease decides which
one supervises it, and when that process stops, the other takes over."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from cortex.integrations.functions.local import LocalProvider
from models import functions

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


def runtimes_of(project_id: str) -> list[int]:
    """Pids of the runtime processes of this project on this machine (what `ps` shows)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read().replace(b"\x00", b" ").decode(errors="replace")
        except OSError:
            continue
        if "runtime-v" in command and project_id in command:
            found.append(int(entry))
    return found


def row_of(project_id: str) -> functions.FunctionRuntime:
    return functions.FunctionRuntime.get(functions.FunctionRuntime.project == project_id)


def wait_until(condition, timeout: float, project_id: str):
    """Wait for ``condition()``, checking all along that the project never has two runtimes."""
    deadline = time.monotonic() + timeout
    while True:
        assert len(runtimes_of(project_id)) <= 1, runtimes_of(project_id)
        if condition():
            return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_processes_run_one_runtime_and_hand_it_over(servers, owner, tmp_path):
    provider = LocalProvider(tmp_path / "unused")
    functions.activate(owner.project, {"locationCity": "local", "locationContinent": "local",
                                       "locationCountry": "local"},
                       {p.slug: p.body() for p in provider.resource_packages()},
                       [location.body() for location in provider.locations()], provider.versions()[-1].version)
    project_id = owner.project.id
    first, second = servers(2, None)
    wait_until(lambda: row_of(project_id).activation_step == "complete"
               and row_of(project_id).runtime_status == "running", 60, project_id)
    holder = row_of(project_id).lease_owner
    end = time.monotonic() + 4  # both supervisors keep looking once a second: still exactly one runtime
    while time.monotonic() < end:
        assert len(runtimes_of(project_id)) == 1
        time.sleep(0.2)
    assert row_of(project_id).lease_owner == holder
    owning = first if str(first.process.pid) in holder else second
    other = second if owning is first else first
    old = runtimes_of(project_id)
    owning.stop()  # a clean stop: its runtime stops and its lease is released
    wait_until(lambda: runtimes_of(project_id) != old and len(runtimes_of(project_id)) == 1
               and row_of(project_id).runtime_status == "running", 30, project_id)
    assert str(other.process.pid) in row_of(project_id).lease_owner
    other.stop()
    wait_until(lambda: runtimes_of(project_id) == [], 15, project_id)
