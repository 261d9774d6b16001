"""The deployment recipes: compose.yaml, the Dockerfile, deploy/kubernetes/ and
deploy/systemd/ are read and checked for what an operator relies on: the services, no
root, health checks, secrets only from the environment, workers that scale. The image is
built and its health check watched only where a Docker daemon answers."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

BASE_DIR = Path(__file__).resolve().parents[2]
DEPLOY = BASE_DIR / "deploy"
SECRET_NAMES = re.compile(r"SECRET|PASSWORD|TOKEN|_AUTH|DATABASE_URL|REDIS_URL")
# ${NAME} or ${NAME:-default} / ${NAME:?message}: a value compose takes from the environment.
FROM_ENVIRONMENT = re.compile(r"\$\{[A-Z_]+(:[-?][^}]*)?\}")


def compose() -> dict:
    return yaml.safe_load((BASE_DIR / "compose.yaml").read_text())


def kubernetes() -> list[dict]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in kubernetes() if doc["kind"] in ("Deployment", "Job")}


def test_compose_has_the_database_redis_web_a_worker_and_a_scalable_loader():
    services = compose()["services"]
    assert set(services) == {"db", "redis", "web", "worker", "loader"}
    assert services["loader"]["environment"]["Q_CLUSTER_NAME"] == "loaders"
    assert "Q_CLUSTER_NAME" not in services["worker"]["environment"]
    # `--scale loader=4` needs copies that can coexist: no fixed name, no host port.
    assert "container_name" not in services["loader"] and "ports" not in services["loader"]
    assert services["web"]["command"] == ["scripts/serve"]
    assert "redis:6379" in services["web"]["environment"]["REDIS_URL"]  # Redis is the broker
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgres://")


def test_no_compose_service_runs_as_root_or_touches_the_docker_socket():
    text = (BASE_DIR / "compose.yaml").read_text()
    assert "docker.sock" not in text
    for name, service in compose()["services"].items():
        assert service.get("user") not in (None, "", "root", "0", "0:0"), f"{name} runs as root"
        assert not str(service["user"]).startswith("0:"), name
        assert not service.get("privileged"), name


def test_every_compose_service_has_a_health_check_and_data_lives_in_named_volumes():
    data = compose()
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    for name, service in data["services"].items():
        # web's is the image's own HEALTHCHECK (GET /health/web/).
        assert "healthcheck" in service or (name == "web" and "HEALTHCHECK" in dockerfile), name
    assert "--local-cluster" in data["services"]["loader"]["healthcheck"]["test"]
    volumes = {volume.split(":")[0] for service in data["services"].values() for volume in service.get("volumes", [])}
    assert volumes == set(data["volumes"]) == {"pgdata", "redisdata"}
    # Workers start after the web service is healthy, i.e. after it applied the migrations.
    for name in ("worker", "loader"):
        assert data["services"][name]["depends_on"]["web"]["condition"] == "service_healthy"


def test_compose_takes_every_secret_from_the_environment():
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAMES.search(key) and value:
                assert FROM_ENVIRONMENT.search(str(value)), f"{name}: {key} is inlined: {value!r}"
                # The whole secret part is a reference: nothing like user:hunter2@ around it.
                assert not re.search(r"://[^$@/]*:[^$@/{]+@", str(value)), f"{name}: {key}"
    example = (BASE_DIR / ".env.example").read_text()
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert re.search(rf"^{name}=$", example, re.M), f".env.example must leave {name} empty"


def test_dockerfile_is_slim_python_311_non_root_with_a_health_check_and_no_build_tools():
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert all(stage.startswith("python:3.11-slim") for stage in stages)
    final = stages[-1]
    assert re.search(r"^USER 10001", final, re.M)
    assert re.search(r"^HEALTHCHECK .*?/health/web/", final, re.M | re.S)
    assert not re.search(r"apt-get install|build-essential|gcc", dockerfile)
    assert "--only-binary=:all:" in dockerfile  # wheels only: nothing is ever compiled
    ignored = (BASE_DIR / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", ".env"} <= set(ignored)


def test_kubernetes_has_web_deployment_and_service_worker_loader_and_a_secret_example():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in kubernetes()}
    assert {
        ("Deployment", "trafficinator-web"),
        ("Service", "trafficinator-web"),
        ("Deployment", "trafficinator-worker"),
        ("Deployment", "trafficinator-loader"),
        ("Secret", "trafficinator"),
        ("ConfigMap", "trafficinator"),
        ("Job", "trafficinator-migrate"),
    } <= kinds
    # The example Secret is kept out of `kubectl apply -f deploy/kubernetes/`.
    top_level = [doc for path in (DEPLOY / "kubernetes").glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())]
    assert "Secret" not in {doc["kind"] for doc in top_level if doc}


def test_kubernetes_pods_run_as_non_root_with_probes_and_secrets_from_the_secret():
    for name, doc in deployments().items():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"secretRef": {"name": "trafficinator"}} in container["envFrom"], name
            for variable in container.get("env", []):
                assert not SECRET_NAMES.search(variable["name"]) or "valueFrom" in variable, (name, variable)
            if doc["kind"] == "Deployment":
                assert "livenessProbe" in container, name
    web = deployments()["trafficinator-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/health/web/"
    loader = deployments()["trafficinator-loader"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "Q_CLUSTER_NAME", "value": "loaders"} in loader["env"]
    assert "loaders" in loader["livenessProbe"]["exec"]["command"]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_systemd_units_run_web_worker_and_loader_instances_as_an_unprivileged_user():
    units = {name: unit(name) for name in ("trafficinator-web.service", "trafficinator-worker.service")}
    units["trafficinator-loader@.service"] = unit("trafficinator-loader@.service")
    for name, parsed in units.items():
        service = parsed["Service"]
        assert service["User"] == "trafficinator", name
        assert service["EnvironmentFile"] == "/etc/trafficinator/env", name  # secrets stay out of units
        assert service["NoNewPrivileges"] == "yes" and service["Restart"] == "on-failure", name
        assert not any(SECRET_NAMES.search(line) for line in parsed["Service"].get("Environment", "").splitlines())
    assert units["trafficinator-web.service"]["Service"]["ExecStart"].endswith("scripts/serve")
    loader = units["trafficinator-loader@.service"]
    assert loader["Service"]["Environment"] == "Q_CLUSTER_NAME=loaders"
    assert "%i" in loader["Unit"]["Description"]


def docker_daemon() -> str:
    docker = shutil.which("docker")
    if not docker:
        pytest.skip("no docker command here: the image build and its health check are not tried")
    if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker daemon answers here: the image build and its health check are not tried")
    return docker


def test_the_image_builds_and_its_health_check_passes():
    docker = docker_daemon()
    tag = "trafficinator:test"
    subprocess.run([docker, "build", "-t", tag, str(BASE_DIR)], check=True, timeout=1800)
    started = subprocess.run(
        [docker, "run", "-d", "--rm", "-e", "SECRET_KEY=image-test-" + "x" * 40, "-e", "ALLOWED_HOSTS=localhost", tag],
        check=True,
        capture_output=True,
        text=True,
    )
    container = started.stdout.strip()
    try:
        deadline = time.monotonic() + 240
        status = ""
        while time.monotonic() < deadline and status != "healthy":
            time.sleep(3)
            status = subprocess.run(
                [docker, "inspect", "--format", "{{.State.Health.Status}}", container], capture_output=True, text=True
            ).stdout.strip()
            assert status != "unhealthy"
        assert status == "healthy"
        user = subprocess.run([docker, "exec", container, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user == "10001"
    finally:
        subprocess.run([docker, "stop", container], capture_output=True)
