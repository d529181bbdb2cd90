"""The TypeScript client (``clients/typescript``): its generated code matches the proto, and
its own tests (node's test runner, against an ``auditlog run`` they start themselves) pass,
the product page's ``auditClient.writeEvent({event: {...}})`` example and the README's
webhook-signature snippet for Node.js among them.

Installs with ``npm ci`` from the committed ``package-lock.json`` when ``node_modules`` is
missing or older than the lock. Without node or npm the tests skip, saying so, except
under ``CI=true``, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.events import ROOT

pytestmark = pytest.mark.integration
PACKAGE = ROOT / "clients" / "typescript"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = "node" if node is None else "npm"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is not installed: CI must run the TypeScript client's tests")
        pytest.skip(f"{missing} is not installed (Node.js 18.14+ runs clients/typescript)")
    return node, npm


def _run(cmd: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **env))  # fmt: skip
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def installed() -> str:
    """npm, after `npm ci` when node_modules is missing or older than the lock file."""
    _, npm = _tools()
    stamp = PACKAGE / "node_modules" / ".package-lock.json"
    lock = PACKAGE / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
    return npm


def test_generated_code_is_current(installed: str, tmp_path: Path) -> None:
    """`npm run generate` (buf + protoc-gen-es) would write exactly what is committed."""
    npx = str(Path(installed).with_name("npx"))
    _run([npx, "buf", "generate", "-o", str(tmp_path)], timeout=120)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ts"))
    committed = sorted(p.relative_to(PACKAGE) for p in (PACKAGE / "src" / "gen").rglob("*.ts"))
    assert fresh == committed, "run: npm run generate (in clients/typescript)"
    for rel in fresh:
        assert (tmp_path / rel).read_text() == (PACKAGE / rel).read_text(), (
            f"{rel} is stale: run npm run generate (in clients/typescript)")  # fmt: skip


def test_typescript_client_tests_pass_against_a_real_service(installed: str) -> None:
    """`npm test`: builds, then node --test against `auditlog run` (this checkout's)."""
    auditlog = Path(sys.executable).with_name("auditlog")
    done = _run([installed, "test"], timeout=600, AUDITLOG_BIN=str(auditlog))
    print(done.stdout[-3000:])
    assert "# fail 0" in done.stdout and "# pass 4" in done.stdout
