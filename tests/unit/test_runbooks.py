"""Every alert in deploy/alerts.yml has a runbook entry in the README, and the README
section the alerts file points to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _alerts() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", (ROOT / "deploy" / "alerts.yml").read_text(),
                      re.M)  # fmt: skip


def _runbook_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Alerts and runbooks")
    end = readme.index("\n## ", start)
    return readme[start:end]


def test_alerts_file_points_to_a_real_section() -> None:
    header = (ROOT / "deploy" / "alerts.yml").read_text().split("groups:")[0]
    assert '("Alerts and runbooks")' in header
    assert _runbook_section()


def test_every_alert_has_a_runbook_row() -> None:
    alerts = _alerts()
    assert len(alerts) >= 14  # not vacuous: the file was read
    rows = [line for line in _runbook_section().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(Auditlog\w+)`", row.split("|")[1])}
    assert set(alerts) <= named, sorted(set(alerts) - named)
    # Each row says something beyond the name.
    assert all(len(row.split("|")[2].strip()) > 40 for row in rows)
