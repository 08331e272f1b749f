"""What the tests that start their own Ray nodes with ``ray start`` share: free ports, and the
processes of one node's session, found and stopped through ``/proc`` (each node is started with
``start_new_session``, so its session holds everything it spawned, and only that)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of process session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp session ...; zombies are already dead
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def stop_session(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, every process of ``process``'s session (a throwaway node: no need to
    wait long), then reap the leader."""
    sid = process.pid  # start_new_session: the session id is the leader's pid
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        pids = session_pids(sid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and session_pids(sid):
            time.sleep(0.2)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
