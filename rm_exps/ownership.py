"""Who runs a run folder: a lock so two sweeps of one plan never run the same run at once, and an
owner record (host, pid, process start) so `--status` can tell a running run from one whose
process is gone (killed, preempted, its machine rebooted).

    <run_dir>/.lock        flock'ed by the process that executes the run (released when it exits, even by SIGKILL)
    <run_dir>/owner.json   {host, pid, process_start, started}: written when the run starts
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from rm_exps.outputs import read_json, write_json_atomic

LOCK = ".lock"
OWNER = "owner.json"
OWNED = "running elsewhere"  # the status of a run another process holds the lock of

log = logging.getLogger("rm_exps")


def try_lock(run_dir: Path) -> IO[str] | None:
    """An exclusive lock on the run folder, or None when another process holds it. Keep the
    returned file open for as long as the run is owned; closing it (or exiting) releases it."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    handle = open(Path(run_dir) / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # exited, not reaped yet
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def write_owner(run_dir: Path) -> None:
    """Record this process as the run's owner."""
    pid = os.getpid()
    write_json_atomic(
        Path(run_dir) / OWNER,
        {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid), "started": time.time()},
    )


def owner(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / OWNER)


def owner_alive(record: dict[str, Any]) -> bool | None:
    """True if the recorded owner still runs, False if it is gone, None if it cannot be told here
    (another host). A pid reused by another process counts as gone (its start time differs)."""
    if record.get("host") != socket.gethostname():
        return None
    start = _process_start(int(record.get("pid", -1)))
    return start is not None and (record.get("process_start") is None or abs(start - record["process_start"]) < 1.0)


def describe(record: dict[str, Any]) -> str:
    return f"pid {record.get('pid')} on {record.get('host')}"


def owned_elsewhere(run_dir: Path, name: str, where: str) -> dict[str, Any]:
    """The result of a run another process (a second sweep of the plan) holds the lock of: not run
    here, not a failure."""
    record = owner(run_dir)
    by = describe(record) if record else "another process"
    log.warning("%s %s: skipped, %s is running it", where, name, by)
    return {"status": OWNED, "error": f"running in {by}"}
