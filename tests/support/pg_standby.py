"""A PostgreSQL primary and a synchronous standby on this machine, from the binaries the
project already installs (pgserver's PostgreSQL 16: ``initdb``, ``pg_ctl``,
``pg_basebackup``), driven through :class:`auditlog.embedded.EmbeddedPostgres`.

The standby is a ``pg_basebackup`` of the primary streaming as ``standby1``, which the
primary then names in ``synchronous_standby_names``: a commit returns only once the
standby has it on disk. The primary can be killed (-9, with all its backends: a crash) and
the standby promoted. As root, both run as the system user pgserver's way makes
(``auditlog``), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import asyncpg

from auditlog.embedded import PG_SYSTEM_USER, EmbeddedPostgres, postgres_bin_dir
from tests.support.waits import eventually

STANDBY_NAME = "standby1"


class PrimaryWithStandby:
    """A primary under ``root/primary`` and its synchronous standby under ``root/standby``.

    Args:
        root: a directory for both clusters.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = EmbeddedPostgres(root / "primary")
        self.standby = EmbeddedPostgres(root / "standby")
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        self._bin = postgres_bin_dir()

    async def start(self) -> None:
        """Start the primary, make the standby from it, start that, and make it
        synchronous (waits until the primary reports it so)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            self.primary.start()
        password = (self.root / "primary" / "pg" / "password").read_text().strip()
        data = self.standby.data
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / "primary" / "pg" / "password", data.parent / "password")
        self._own(data.parent)
        conninfo = (f"host=127.0.0.1 port={self.primary.port} user=postgres "
                    f"password={password} application_name={STANDBY_NAME}")  # fmt: skip
        self._run([str(self._bin / "pg_basebackup"), "-D", str(data), "-X", "stream",
                   "-c", "fast", "-d", conninfo])  # fmt: skip
        (data / "standby.signal").write_text("")
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")
        self._own(data)
        self.standby.start()
        conn = await asyncpg.connect(self.primary.dsn("postgres"))
        try:
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            await conn.execute("SELECT pg_reload_conf()")
            await eventually(
                lambda: conn.fetchval("SELECT sync_state FROM pg_stat_replication"
                                      " WHERE application_name = $1", STANDBY_NAME),
                lambda state: state == "sync", timeout=60, interval=0.1,
                what=f"{STANDBY_NAME} is the primary's synchronous standby",
            )  # fmt: skip
        finally:
            await conn.close()

    def dsn(self, database: str) -> str:
        """``database`` on both hosts, primary first, wanting the read-write one (libpq's
        multi-host form, as a production AUDIT_DATABASE_URL)."""
        password = (self.root / "primary" / "pg" / "password").read_text().strip()
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return (
            f"postgresql://postgres:{password}@{hosts}/{database}?target_session_attrs=read-write"
        )

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every backend (its process group): a crash,
        every client connection cut at once, nothing flushed or shut down."""
        lines = (self.primary.data / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        group = os.getpgid(pid)
        assert group != os.getpgrp(), "the primary shares the test's process group"
        os.killpg(group, signal.SIGKILL)

    def promote(self) -> None:
        """Promote the standby (``pg_ctl promote``, waiting until it accepts writes)."""
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.standby.data), "promote", "-w",
                   "-t", "60"])  # fmt: skip

    def stop(self) -> None:
        """Stop the standby (the killed primary stays down: never two primaries)."""
        self.standby.stop()

    def _own(self, path: Path) -> None:
        if self._user is None:
            return
        from pgserver.utils import ensure_prefix_permissions

        pw = pwd.getpwnam(self._user)
        ensure_prefix_permissions(path)
        for p in (path, *path.rglob("*")):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        path.chmod(0o700)

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             user=self._user, cwd=str(self.root), timeout=120,
                             start_new_session=True, check=False)  # fmt: skip
        assert out.returncode == 0, f"{cmd[0]} failed: {out.stdout}{out.stderr}"
