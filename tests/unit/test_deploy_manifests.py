"""The deployment files parse, and every setting, environment variable, port and path they name
is one the broker has (deploy/compose.yaml, deploy/kubernetes/*.yaml, deploy/Dockerfile)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import broker.settings as settings_module
from broker.http.discovery import healthz, readyz
from broker.policy.engine import PolicyEngine
from broker.policy.runtime import DEFAULT_MODEL
from broker.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object by ``Kind/name``."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def _broker_env_names() -> set[str]:
    """The environment variables the broker reads: the ``*_ENV`` names in its settings."""
    return {
        value for name, value in vars(settings_module).items()
        if name.endswith("_ENV") and isinstance(value, str)
    }  # fmt: skip


def _settings_from(text: str, tmp_path: Path) -> Settings:
    config = tmp_path / "broker.toml"
    config.write_text(text)
    return load_settings(str(config), environ={})  # unknown keys raise SettingsError


def _container() -> dict[str, Any]:
    deployment = _k8s()["Deployment/a2a-broker"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_every_file_parses() -> None:
    assert _docs(DEPLOY / "compose.yaml")
    assert set(_k8s()) >= {"ConfigMap/a2a-broker", "Secret/a2a-broker", "Deployment/a2a-broker",
                           "Service/a2a-broker", "PodDisruptionBudget/a2a-broker"}  # fmt: skip


def test_the_kubernetes_config_is_the_broker_s_and_names_its_port(tmp_path: Path) -> None:
    config = _k8s()["ConfigMap/a2a-broker"]["data"]
    settings = _settings_from(config["broker.toml"], tmp_path)
    assert settings.store.redis_mode == "cluster"
    ports = {port["name"]: port["containerPort"] for port in _container()["ports"]}
    assert ports == {"http": settings.server.port}
    policy = tmp_path / "policy.csv"
    policy.write_text(config["policy.csv"])
    PolicyEngine.from_files(DEFAULT_MODEL, policy)  # the example policy loads


def test_the_compose_config_is_the_broker_s_and_its_sentinels_exist(tmp_path: Path) -> None:
    settings = _settings_from((DEPLOY / "broker-sentinel.toml").read_text(), tmp_path)
    assert settings.store.redis_mode == "sentinel"
    services = _docs(DEPLOY / "compose.yaml")[0]["services"]
    for part in settings.store.redis_url.split(","):
        host, port = re.fullmatch(r"redis://([\w-]+):(\d+)", part).groups()  # type: ignore[union-attr]
        assert host in services, host
        assert f"port {port}" in services[host]["command"][0]
    assert f"monitor {settings.store.sentinel_service} " in services["sentinel-1"]["command"][0]
    assert services["broker"]["expose"] == [str(settings.server.port)]
    assert f"127.0.0.1:{settings.server.port}/readyz" in " ".join(
        services["broker"]["healthcheck"]["test"]
    )


def test_every_environment_variable_named_is_one_the_broker_reads() -> None:
    known = _broker_env_names()
    named = {entry["name"] for entry in _container()["env"]}
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]["broker"]["environment"]
    named |= set(compose)
    assert named <= known, named - known
    assert {"A2A_BROKER_REDIS_PASSWORD", "A2A_BROKER_ADMIN_TOKEN"} <= named


def test_secrets_come_from_the_secret_and_every_key_exists() -> None:
    objects = _k8s()
    secret = objects["Secret/a2a-broker"]["stringData"]
    for entry in _container()["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "a2a-broker" and ref["key"] in secret
    volumes = objects["Deployment/a2a-broker"]["spec"]["template"]["spec"]["volumes"]
    keys = next(v for v in volumes if v["name"] == "keys")["secret"]
    assert [item["key"] for item in keys["items"]] == ["signing-key.pem"]
    assert "signing-key.pem" in secret
    assert "password" not in objects["ConfigMap/a2a-broker"]["data"]["broker.toml"]


@pytest.mark.parametrize(
    ("probe", "handler"), [("livenessProbe", healthz), ("readinessProbe", readyz)]
)
def test_the_probes_are_the_broker_s_health_routes(probe: str, handler: Any) -> None:
    get = _container()[probe]["httpGet"]
    assert get["port"] == "http"
    assert get["path"] in handler.paths


def test_the_disruption_budget_and_service_select_the_brokers() -> None:
    objects = _k8s()
    labels = objects["Deployment/a2a-broker"]["spec"]["template"]["metadata"]["labels"]
    pdb = objects["PodDisruptionBudget/a2a-broker"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1 < objects["Deployment/a2a-broker"]["spec"]["replicas"]
    assert objects["Service/a2a-broker"]["spec"]["selector"].items() <= labels.items()


def test_the_image_runs_the_broker_on_its_port(tmp_path: Path) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    settings = _settings_from(_k8s()["ConfigMap/a2a-broker"]["data"]["broker.toml"], tmp_path)
    assert f"EXPOSE {settings.server.port}" in dockerfile
    assert '"a2a-broker", "serve"' in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE):
        assert (REPO / copied).exists(), copied
