"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine on these machines).

What compose ships is what the tests check: every file it bind-mounts must be in the repository, every image is
pinned, nothing is published beyond loopback and Grafana has no default admin password.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_expected_services() -> None:
    assert {"app", "prometheus", "alertmanager", "grafana", "simulate"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_bind_mounted_host_paths_exist_in_the_repository(name: str) -> None:
    for source, target in _bind_mounts(SERVICES[name]):
        assert source.startswith("./"), f"{name}: mount {source} should be relative to the repository"
        host = (ROOT / source).resolve()
        assert ROOT in host.parents, f"{name}: {source} points outside the repository"
        assert host.exists(), f"{name}: {source} (mounted at {target}) does not exist"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    service = SERVICES[name]
    image = service.get("image")
    if image is None:
        assert "build" in service, f"{name}: neither image nor build"
        return
    if "build" in service:
        return  # a local tag for the image compose builds from this repository
    assert "@sha256:" in image or re.search(r":[^/:]+$", image), f"{name}: image {image} has no tag"
    tag = image.rsplit(":", 1)[-1]
    assert tag != "latest", f"{name}: {image} uses latest"
    assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_prometheus_and_alertmanager_versions() -> None:
    assert re.fullmatch(r"prom/prometheus:v2\.53\.\d+", SERVICES["prometheus"]["image"])
    assert SERVICES["alertmanager"]["image"] == "prom/alertmanager:v0.27.0"
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", SERVICES["grafana"]["image"])


def test_grafana_admin_password_has_no_default() -> None:
    env = SERVICES["grafana"]["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    # ${VAR:?message} makes compose refuse to start when VAR is unset or empty; ${VAR:-x} or a literal would not.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]*\}", password), password
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def _published(port: Any) -> tuple[str | None, str]:
    """(host ip, description) of a port entry in short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port)
    parts = str(port).split(":")
    return (parts[0] if len(parts) == 3 else None), str(port)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_published_ports_bind_loopback_only(name: str) -> None:
    for port in SERVICES[name].get("ports", []):
        host_ip, text = _published(port)
        assert host_ip == "127.0.0.1", f"{name}: port {text} is not bound to 127.0.0.1"


def test_services_that_need_the_app_wait_until_it_is_healthy() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        if "app" in depends:
            assert isinstance(depends, dict) and depends["app"]["condition"] == "service_healthy", name
    assert "app" in SERVICES["simulate"]["depends_on"]
    assert any(instruction == "HEALTHCHECK" for instruction, _ in _dockerfile_instructions())


def test_simulate_is_a_demo_profile_service_on_the_app_image() -> None:
    simulate, app = SERVICES["simulate"], SERVICES["app"]
    assert simulate["profiles"] == ["demo"]
    assert simulate["image"] == app["image"] and simulate["build"] == app["build"]
    command = simulate["command"]
    assert command[:2] == ["exporter", "simulate"]
    assert command[command.index("--url") + 1] == "http://app:8000"
    assert command[command.index("--scenario") + 1] == "shift"


def test_prometheus_reads_the_mounted_config() -> None:
    prometheus = SERVICES["prometheus"]
    mounts = dict((target, source) for source, target in _bind_mounts(prometheus))
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert config == "/etc/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus"] == "./prometheus"
    assert (ROOT / "prometheus" / "prometheus.yml").is_file()
    am_mounts = dict((target, source) for source, target in _bind_mounts(SERVICES["alertmanager"]))
    assert am_mounts["/etc/alertmanager/alertmanager.yml"] == "./prometheus/alertmanager.yml"


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned() -> None:
    (base,) = [args for instruction, args in _dockerfile_instructions() if instruction == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?", base), base


def test_dockerfile_runs_as_unprivileged_user() -> None:
    instructions = _dockerfile_instructions()
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] == "exporter"
    assert "--uid 10001" in DOCKERFILE
    # The CMD comes after the final USER, so the service never runs as root.
    last_user = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "USER")
    last_cmd = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "CMD")
    assert last_user < last_cmd


def test_dockerfile_copies_only_what_exists() -> None:
    for instruction, args in _dockerfile_instructions():
        if instruction == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert not source.startswith("--"), "COPY flags are not expected here"
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source in {"pyproject.toml", "README.md", "exporter"}, f"unexpected COPY {source}"


def test_dockerfile_serves_on_port_8000_with_data_dir() -> None:
    instructions = dict(_dockerfile_instructions())
    assert instructions["EXPOSE"] == "8000"
    assert instructions["CMD"] == '["exporter", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    assert "EXPORTER_DATA_DIR=/data" in instructions["ENV"]
    assert "DO_NOT_TRACK=1" in instructions["ENV"]
    assert "127.0.0.1:8000/healthz" in instructions["HEALTHCHECK"]


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines
    assert {"!pyproject.toml", "!README.md", "!exporter/"} <= set(lines)


# ---------------------------------------------------------------------------------------------------------------
# Stopping the app
# ---------------------------------------------------------------------------------------------------------------


def _compose_seconds(duration: str) -> float:
    """A compose duration such as 90s, 1m30s or 1h."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_app_stop_grace_period_outlasts_a_graceful_shutdown() -> None:
    """docker compose stop sends SIGTERM, then SIGKILL after the grace period (Docker's default: 10 s). Shutdown
    waits for requests in flight (uvicorn), then flushes the prediction log: both must fit, or rows are lost."""
    from exporter.cli import GRACEFUL_SHUTDOWN_SECONDS
    from exporter.config import PredictionLogSection

    flush = PredictionLogSection.model_fields["shutdown_timeout_seconds"].default
    drift_worker = 6  # stopping the drift job's worker process: a 1 s join, then a kill and a 5 s join
    grace = _compose_seconds(str(SERVICES["app"]["stop_grace_period"]))
    assert grace > GRACEFUL_SHUTDOWN_SECONDS + flush + drift_worker, grace


def test_dockerfile_stop_signal_reaches_uvicorn() -> None:
    instructions = _dockerfile_instructions()
    # Exec form: `exporter serve` is PID 1 and receives the stop signal itself (no shell in between).
    cmd = [args for instruction, args in instructions if instruction == "CMD"][-1]
    assert cmd.startswith("[") and cmd.endswith("]"), cmd
    assert not [args for instruction, args in instructions if instruction == "ENTRYPOINT"]
    # uvicorn shuts down gracefully on SIGTERM (Docker's default) and SIGINT.
    signals = [args for instruction, args in instructions if instruction == "STOPSIGNAL"]
    assert all(s in ("SIGTERM", "SIGINT", "15", "2") for s in signals), signals
