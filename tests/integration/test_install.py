"""Installs like a service: a wheel built from the repo, installed into a fresh virtualenv
outside the checkout, runs `auditlog migrate` and `auditlog run` (every file the service
reads at run time ships in the wheel).

Offline and fast: the wheel is built from a copy of the sources without build isolation,
the virtualenv gets the wheel alone (``--no-deps``) and borrows the dependencies from this
virtualenv's site-packages through a ``.pth`` line. An editable install's finder in that
site-packages is not run from a path added that way, so ``auditlog`` can only resolve to
the wheel; the test checks that it does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import asyncpg
import pytest

from auditlog.embedded import free_port
from infra.db import runtime_role
from infra.migrate import load_migrations
from tests.support.databases import create_database
from tests.support.events import ROOT
from tests.support.waits import eventually_sync

pytestmark = pytest.mark.integration
PIP_QUIET = ("--quiet", "--disable-pip-version-check", "--no-input")


def copy_sources(dest: Path) -> list[str]:
    """Copy what the wheel is built from (pyproject, setup.py, readme, the packages'
    folders, without anything built in place) to ``dest``, so building never writes into
    the checkout; return the copied files, relative to ``dest``, that belong to the
    packages (C sources are compiled into the wheel, not shipped)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", meta["project"]["readme"]):
        shutil.copy2(ROOT / name, dest / name)
    tops = sorted({p.split(".")[0] for p in meta["tool"]["setuptools"]["packages"]})
    for top in tops:
        shutil.copytree(ROOT / top, dest / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))  # fmt: skip
    return sorted(str(p.relative_to(dest)) for t in tops for p in (dest / t).rglob("*")
                  if p.is_file() and p.suffix != ".c")  # fmt: skip


def build_wheel(src: Path, out: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """The wheel built from ``src`` and the build's output (``env``: the build's)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps",
                        "--disable-pip-version-check", "--no-input", "--no-build-isolation",
                        "--no-index", "-w", str(out), str(src)], check=True, cwd=out.parent,
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    (wheel,) = out.glob("auditlog-*.whl")
    return wheel, r.stdout + r.stderr


def fresh_venv(venv: Path, wheel: Path) -> Path:
    """A new virtualenv holding ``wheel`` and, through a ``.pth`` line, this virtualenv's
    dependencies; return its ``bin`` folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    *PIP_QUIET, "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()  # fmt: skip
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "borrowed-dependencies.pth").write_text("".join(p + "\n" for p in ours))
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings or paths that could reach the checkout."""
    drop = ("AUDIT_", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONNOUSERSITE="1", **extra)
    return env


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> dict:
    def answer() -> tuple[int, dict]:
        assert proc.poll() is None, log.read_text()[-4000:]
        return readyz(port)

    try:
        _, body = eventually_sync(answer, lambda r: r[0] == 200, timeout=timeout, interval=0.2,
                                  ignore=(OSError,), what="/readyz answers 200")  # fmt: skip
    except AssertionError as exc:
        if proc.poll() is not None:
            raise
        raise AssertionError(f"{exc}\n{log.read_text()[-4000:]}") from exc
    return body


async def drop_database(server_url: str, dsn: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{runtime_role(dsn)}"')
    finally:
        await admin.close()


async def applied(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM auditlog_schema_migrations ORDER BY 1")
        return [r["version"] for r in rows]
    finally:
        await conn.close()


def test_wheel_installed_outside_the_checkout_migrates_and_serves(
    tmp_path: Path, pg_server_url: str, nats_url: str
) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    packaged = copy_sources(tmp_path / "src")
    wheel, _ = build_wheel(tmp_path / "src", tmp_path / "dist")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in packaged if f not in shipped]
    assert not missing, f"files of the packages left out of the wheel: {missing}"
    # A C compiler is here: the hot path is compiled into the wheel.
    assert any(f.startswith("pipeline/_fastpath.") and f.endswith(".so") for f in shipped)

    venv = tmp_path / "venv"
    bin_dir = fresh_venv(venv, wheel)
    work = tmp_path / "elsewhere"  # the working directory: no source tree around
    work.mkdir()
    probe = ("import json, auditlog, infra, pipeline, query_api, schemas, sql; "
             "from pipeline import _fastpath; print(json.dumps({m.__name__: m.__file__ for m in "
             "(auditlog, infra, pipeline, query_api, schemas, sql, _fastpath)}))")  # fmt: skip
    r = subprocess.run([str(bin_dir / "python"), "-c", probe], cwd=work, env=clean_env(),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name, file in json.loads(r.stdout).items():
        assert Path(file).resolve().is_relative_to(venv.resolve()), (name, file)

    dsn = asyncio.run(create_database(pg_server_url, None))  # empty: migrate makes it all
    try:
        env = clean_env(AUDIT_DATABASE_URL=dsn, AUDIT_STATE_DIR=str(tmp_path / "state"))
        r = subprocess.run([str(bin_dir / "auditlog"), "migrate"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=180)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        expected = [m.version for m in load_migrations(ROOT / "sql")]
        assert asyncio.run(applied(dsn)) == expected

        tag = f"INST{os.getpid()}_{uuid.uuid4().hex[:6]}"
        port = free_port()
        env.update(AUDIT_NATS_URL=nats_url, AUDIT_HTTP_PORT=str(port),
                   AUDIT_GRPC_PORT=str(free_port()), AUDIT_METRICS_PORT=str(free_port()),
                   AUDIT_STREAM=tag, AUDIT_SUBJECT=f"{tag}.events", AUDIT_DLQ_STREAM=f"{tag}_DLQ",
                   AUDIT_DLQ_SUBJECT=f"{tag}.dlq", AUDIT_COMMIT_SUBJECT=f"{tag}.committed",
                   AUDIT_CHECKPOINT_STREAM=f"{tag}_CP", AUDIT_CHECKPOINT_SUBJECT=f"{tag}.cp",
                   AUDIT_STREAM_MAX_BYTES=str(64 << 20), AUDIT_DLQ_MAX_BYTES=str(64 << 20),
                   AUDIT_RETENTION_INTERVAL_S="0")  # fmt: skip
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(bin_dir / "auditlog"), "run"], cwd=work, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            body = wait_ready(port, proc, log)
            assert body["checks"] == {"postgresql": "ok", "search": "ok", "streams": "ok",
                                      "nats": "ok", "consumer": "ok",
                                      "pipeline": "ok"}, body  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        assert code == 0, log.read_text()[-4000:]
    finally:
        asyncio.run(drop_database(pg_server_url, dsn))


def test_without_a_c_compiler_the_wheel_builds_and_the_pure_path_runs(tmp_path: Path) -> None:
    """A host without a C compiler (simulated: ``CC=/bin/false``): the build says in one
    line that the extension was not built and succeeds; the installed package runs the pure
    Python path and says so when the worker starts."""
    copy_sources(tmp_path / "src")
    env = clean_env(CC="/bin/false", LDSHARED="/bin/false", PATH=os.environ["PATH"])
    wheel, output = build_wheel(tmp_path / "src", tmp_path / "dist", env)
    assert "auditlog: the C extension pipeline._fastpath was NOT built" in output, output[-3000:]
    assert not [f for f in zipfile.ZipFile(wheel).namelist() if "_fastpath." in f
                and not f.endswith(".py")]  # fmt: skip
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = (
        "import logging, sys; from datetime import datetime, UTC\n"
        "logging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
        "from pipeline import fastpath; from pipeline.stages import Message, Valid\n"
        "fastpath.log_choice()\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "out = fastpath.prepare_batch([Message(data=data, stream_seq=1)], datetime.now(UTC))\n"
        "print(fastpath.COMPILED is None, fastpath.prepare_batch is fastpath.pure_prepare_batch,"
        " isinstance(out[0], Valid))\n"
    )  # fmt: skip
    event = ROOT / "tests" / "data" / "readme_event.json"
    r = subprocess.run([str(bin_dir / "python"), "-c", probe, str(event)], cwd=work,
                       env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]
    assert ("WARNING pipeline hot path: pure Python: the C extension pipeline._fastpath is not "
            "built") in r.stderr, r.stderr  # fmt: skip
