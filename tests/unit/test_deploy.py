"""The deployment files say what the production topology needs (``make lint`` runs this).

Schemas are deploy/validate.py's job (kubernetes-validate, ``docker-compose config``); this
reads the files and checks the settings that matter: PostgreSQL replicated synchronously
over three instances, NATS clustered three ways with JetStream on disk, every stream R3,
probes on /healthz and /readyz, pinned images, non-root pods, owner credentials only where
migrations and retention run, no secret in the repository. Custom resources (the
CloudNativePG ``Cluster``, ``PodMonitor``) and the NATS chart's values have no schema
offline, so their field names are checked against the lists below (from CloudNativePG
1.30's Cluster CRD and the nats chart 2.14.2's values.yaml).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.settings import Settings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
PRODUCTION = DEPLOY / "k8s" / "overlays" / "production"
OWNER_VAR = "AUDIT_DATABASE_OWNER_URL"
DEFAULTS = Settings()

# spec fields of postgresql.cnpg.io/v1 Cluster (CloudNativePG 1.30 CRD).
CNPG_SPEC_FIELDS = {
    "affinity", "backup", "bootstrap", "certificates", "description", "enablePDB",
    "enableSuperuserAccess", "env", "envFrom", "ephemeralVolumeSource",
    "ephemeralVolumesSizeLimit", "externalClusters", "failoverDelay", "imageCatalogRef",
    "imageName", "imagePullPolicy", "imagePullSecrets", "inheritedMetadata", "instances",
    "livenessProbeTimeout", "logLevel", "managed", "maxSyncReplicas", "minSyncReplicas",
    "monitoring", "nodeMaintenanceWindow", "plugins", "podSecurityContext", "podSelectorRefs",
    "postgresGID", "postgresUID", "postgresql", "primaryLease", "primaryUpdateMethod",
    "primaryUpdateStrategy", "priorityClassName", "probes", "projectedVolumeTemplate",
    "replica", "replicationSlots", "resources", "schedulerName", "seccompProfile",
    "securityContext", "serviceAccountName", "serviceAccountTemplate", "smartShutdownTimeout",
    "startDelay", "stopDelay", "storage", "superuserSecret", "switchoverDelay", "tablespaces",
    "topologySpreadConstraints", "walStorage",
}  # fmt: skip
CNPG_SYNC_FIELDS = {"dataDurability", "failoverQuorum", "maxStandbyNamesFromCluster",
                    "method", "number", "standbyNamesPost", "standbyNamesPre"}  # fmt: skip
CNPG_ROLE_FIELDS = {"bypassrls", "comment", "connectionLimit", "createdb", "createrole",
                    "disablePassword", "ensure", "inRoles", "inherit", "login", "name",
                    "passwordSecret", "replication", "superuser", "validUntil"}  # fmt: skip
# Top-level keys of the nats chart's values.yaml (2.14.2), and of its `config`.
NATS_TOP_KEYS = {
    "global", "nameOverride", "fullnameOverride", "namespaceOverride", "tlsCA", "config",
    "container", "reloader", "promExporter", "service", "statefulSet", "podTemplate",
    "headlessService", "configMap", "podDisruptionBudget", "serviceAccount", "natsBox",
    "extraResources",
}  # fmt: skip
NATS_CONFIG_KEYS = {"cluster", "jetstream", "nats", "leafnodes", "websocket", "mqtt", "gateway",
                    "monitor", "profiling", "resolver", "serverNamePrefix", "merge",
                    "patch"}  # fmt: skip


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    """The production overlay as ``kubectl kustomize`` renders it."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) not installed: the overlay cannot be rendered")
    out = subprocess.run(["kubectl", "kustomize", str(PRODUCTION)], capture_output=True,
                         text=True, check=True, timeout=120)  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job", "CronJob")]


def _env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def _secret_refs(container: dict[str, Any]) -> set[str]:
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    refs |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    return refs


def _pinned(image: str) -> bool:
    """Pinned: a digest, or a tag naming a version (not `latest`, not a bare major)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name and "/" not in tag and tag != "latest" and re.match(r"v?\d+\.\d+", tag))


# -- PostgreSQL: CloudNativePG ------------------------------------------------------------


def test_cloudnativepg_cluster_replicates_synchronously() -> None:
    cluster = _yaml(PRODUCTION / "postgres-cluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
    spec = cluster["spec"]
    assert set(spec) <= CNPG_SPEC_FIELDS, set(spec) - CNPG_SPEC_FIELDS
    assert spec["instances"] >= 3
    sync = spec["postgresql"]["synchronous"]
    assert set(sync) <= CNPG_SYNC_FIELDS, set(sync) - CNPG_SYNC_FIELDS
    assert sync["method"] in ("any", "first")
    assert 1 <= sync["number"] < spec["instances"]  # a standby left over to fail over to
    assert sync.get("dataDurability", "required") == "required"  # no silent async fallback
    assert sync.get("failoverQuorum") is True
    # The deprecated form must not be there as well (CloudNativePG refuses both at once).
    assert "minSyncReplicas" not in spec and "maxSyncReplicas" not in spec
    assert spec["affinity"]["enablePodAntiAffinity"] is True
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert _pinned(spec["imageName"]) and ":16." in spec["imageName"]
    assert spec.get("enableSuperuserAccess") is False


def test_cloudnativepg_owner_login_can_run_the_migrations() -> None:
    spec = _yaml(PRODUCTION / "postgres-cluster.yaml")["spec"]
    initdb = spec["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == ("auditlog", "auditlog_admin")
    roles = {r["name"]: r for r in spec["managed"]["roles"]}
    for role in roles.values():
        assert set(role) <= CNPG_ROLE_FIELDS, set(role) - CNPG_ROLE_FIELDS
    owner = roles["auditlog_admin"]
    # The first migration creates roles (README "Database credentials"); not a superuser.
    assert owner["createrole"] is True and owner["login"] is True
    assert not owner.get("superuser")
    assert owner["passwordSecret"]["name"] == initdb["secret"]["name"]


# -- NATS: the official chart's values ----------------------------------------------------


def test_nats_values_make_a_three_node_jetstream_cluster_on_disk() -> None:
    values = _yaml(DEPLOY / "k8s" / "nats-values.yaml")
    assert set(values) <= NATS_TOP_KEYS, set(values) - NATS_TOP_KEYS
    config = values["config"]
    assert set(config) <= NATS_CONFIG_KEYS, set(config) - NATS_CONFIG_KEYS
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert re.fullmatch(r"\d+[GT]i", jetstream["fileStore"]["pvc"]["size"])
    assert jetstream["memoryStore"]["enabled"] is False
    tag = values["container"]["image"]["tag"]
    assert _pinned(f"nats:{tag}")
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", tag).groups())  # type: ignore[union-attr]
    assert (major, minor) >= (2, 11)  # priority groups (pinned_client) need nats-server 2.11
    assert values["podTemplate"]["topologySpreadConstraints"]["kubernetes.io/hostname"]
    assert values["podDisruptionBudget"]["enabled"] is True
    # Clients authenticate; the password comes from a Secret, never from this file.
    users = config["merge"]["authorization"]["users"]
    assert all(u["password"].startswith("<< $") for u in users)
    env = values["container"]["env"]
    assert all("secretKeyRef" in v["valueFrom"] for v in env.values())


def test_app_config_names_every_nats_node_and_r3(production: list[dict[str, Any]]) -> None:
    settings = next(d for d in production if d["kind"] == "ConfigMap")["data"]
    assert settings["AUDIT_STREAM_REPLICAS"] == "3"
    urls = settings["AUDIT_NATS_URL"].split(",")
    replicas = _yaml(DEPLOY / "k8s" / "nats-values.yaml")["config"]["cluster"]["replicas"]
    # The chart's pods of release `nats`: nats-0..N-1 behind the headless service.
    assert urls == [f"nats://nats-{i}.nats-headless:4222" for i in range(replicas)]
    assert not any("@" in u for u in urls)  # credentials come from a Secret


# -- Kubernetes workloads -----------------------------------------------------------------


def test_production_has_every_component(production: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in production}
    assert {("Deployment", "auditlog-api"), ("Deployment", "auditlog-pipeline"),
            ("Service", "auditlog-api"), ("Job", "auditlog-migrate"),
            ("CronJob", "auditlog-retention"), ("PodDisruptionBudget", "auditlog-api"),
            ("PodDisruptionBudget", "auditlog-pipeline"), ("Cluster", "auditlog-pg"),
            ("PodMonitor", "auditlog")} <= kinds  # fmt: skip
    assert not [k for k in kinds if k[0] == "Secret"]  # secrets are never in the repository
    for name in ("auditlog-api", "auditlog-pipeline"):
        assert _one(production, "Deployment", name)["spec"]["replicas"] >= 2


ROLE_PORTS = [("auditlog-api", DEFAULTS.http_port), ("auditlog-pipeline", DEFAULTS.metrics_port)]


@pytest.mark.parametrize(("name", "port"), ROLE_PORTS)
def test_probes_use_healthz_and_readyz(production: list[dict[str, Any]], name: str,
                                       port: int) -> None:  # fmt: skip
    (container,) = _pod_spec(_one(production, "Deployment", name))["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):  # fmt: skip
        get = container[probe]["httpGet"]
        assert get["path"] == path, (name, probe)
        assert ports[get["port"]] == port, (name, probe)  # the port this role listens on


def test_pdbs_keep_a_replica_of_each_deployment(production: list[dict[str, Any]]) -> None:
    pdbs = [d for d in production if d["kind"] == "PodDisruptionBudget"]
    for deployment in (d for d in production if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs
                    if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]  # fmt: skip
        assert len(covering) == 1, deployment["metadata"]["name"]
        assert covering[0]["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_images_are_pinned(production: list[dict[str, Any]]) -> None:
    images = [c["image"] for w in _workloads(production) for c in _pod_spec(w)["containers"]]
    assert images and all(_pinned(i) for i in images), images
    compose = _yaml(DEPLOY / "compose.yaml")["services"]
    assert all(_pinned(s["image"]) for s in compose.values()), compose


def test_pods_run_as_non_root_without_privileges(production: list[dict[str, Any]]) -> None:
    for workload in _workloads(production):
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_owner_credentials_only_where_migrations_and_retention_run(
    production: list[dict[str, Any]],
) -> None:
    holders = set()
    for workload in _workloads(production):
        for container in _pod_spec(workload)["containers"]:
            if OWNER_VAR in _env_names(container) or "auditlog-db-owner" in _secret_refs(container):
                holders.add(workload["metadata"]["name"])
    assert holders == {"auditlog-migrate", "auditlog-retention"}
    for name in ("auditlog-api", "auditlog-pipeline"):
        (container,) = _pod_spec(_one(production, "Deployment", name))["containers"]
        assert "AUDIT_DATABASE_URL" in _env_names(container)
    settings = next(d for d in production if d["kind"] == "ConfigMap")["data"]
    assert not any(k.startswith("AUDIT_DATABASE") for k in settings)  # DSNs hold passwords


# -- Compose ------------------------------------------------------------------------------


def test_compose_topology() -> None:
    services = _yaml(DEPLOY / "compose.yaml")["services"]
    assert {"nats-1", "nats-2", "nats-3", "postgres", "migrate", "api-1", "api-2",
            "pipeline-1", "pipeline-2", "prometheus", "grafana"} <= set(services)  # fmt: skip
    nats_conf = (DEPLOY / "compose" / "nats.conf").read_text()
    assert all(f"nats-route://nats-{i}:6222" in nats_conf for i in (1, 2, 3))
    assert re.search(r"^jetstream \{", nats_conf, re.M)
    assert services["migrate"]["command"] == ["migrate"]
    app = {n: s for n, s in services.items() if n.startswith(("api-", "pipeline-"))}
    for name, service in app.items():
        env = service["environment"]
        assert OWNER_VAR not in env, name
        assert env["AUDIT_STREAM_REPLICAS"] == "3", name
        assert env["AUDIT_NATS_URL"].split(",") == [f"nats://nats-{i}:4222" for i in (1, 2, 3)]
        assert "target_session_attrs=read-write" in env["AUDIT_DATABASE_URL"], name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert OWNER_VAR in services["migrate"]["environment"]


def test_compose_example_env_holds_no_real_secret() -> None:
    example = (DEPLOY / "compose.env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    needed = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "compose.yaml").read_text()))
    assert needed <= set(values), needed - set(values)  # `make lint` can render the file
    secrets = {k: v for k, v in values.items() if "PASSWORD" in k or "TOKEN" in k or "SECRET" in k}
    assert secrets and all(v.startswith("change-me") for v in secrets.values())


# -- The image ----------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_runtime_image_of_the_wheel() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [s[1] for s in stages] == ["build", "runtime"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    assert _pinned(base) and base.startswith("python:3.11")
    assert "pip wheel" in text and "[dev]" not in text
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert 'ENTRYPOINT ["auditlog"]' in runtime and "HEALTHCHECK" in runtime
    # Every package the wheel ships is copied into the build stage.
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tops = {p.split(".")[0] for p in meta["tool"]["setuptools"]["packages"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert tops == copied, tops ^ copied
    # setup.py builds the optional compiled fast path (pipeline/_fastpath.c).
    assert f"COPY pyproject.toml setup.py {meta['project']['readme']} ./" in text
