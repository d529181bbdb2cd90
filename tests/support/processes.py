"""``auditlog`` as real processes: start one on a state dir, wait until it is ready, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from auditlog.embedded import free_port
from tests.support.waits import eventually_sync


def get(url: str, token: str = "") -> tuple[int, dict]:
    """GET ``url`` (as ``token``): (status, JSON body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=5) as resp:  # fmt: skip
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(state: Path, port: int, command: str = "run",
          **extra_env: str) -> subprocess.Popen[bytes]:  # fmt: skip
    """``auditlog COMMAND`` on ``state`` (embedded servers), HTTP on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_STATE_DIR=str(state), AUDIT_HTTP_PORT=str(port),
               AUDIT_GRPC_PORT=str(free_port()), **extra_env)  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "auditlog.cli", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> dict:
    """Wait until ``/readyz`` on ``port`` answers 200 (``proc`` still running); its body.

    Raises:
        AssertionError: ``proc`` ended (its output), or not ready in time (the last answer).
    """

    def readyz() -> tuple[int, dict]:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        return get(f"http://127.0.0.1:{port}/readyz")

    _, body = eventually_sync(readyz, lambda r: r[0] == 200, timeout=timeout, interval=0.2,
                              ignore=(OSError,), what=f"/readyz on {port} answers 200")  # fmt: skip
    return body


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM; it must exit 0 within a minute. Returns its output."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    return proc.stdout.read().decode() if proc.stdout else ""


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait (a kill after a minute)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
