"""``cluster.yaml`` (AWS) and ``cluster-onprem.yaml`` (local provider): valid for Ray's own cluster
launcher, and the properties the search relies on: GPU workers from 0, the project on every node,
shared storage, an MLflow server on the head reachable through a forwarded port only, token auth on.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
AWS, ONPREM = REPO / "cluster.yaml", REPO / "cluster-onprem.yaml"
CONFIGS = [AWS, ONPREM]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _commands(config: dict, *keys: str) -> list[str]:
    return [" ".join(cmd.split()) for key in keys for cmd in config.get(key, [])]


def _mlflow_server(config: dict) -> str:
    (server,) = [c for c in _commands(config, "head_start_ray_commands") if "mlflow server" in c]
    return server


def _flag(command: str, name: str) -> str:
    match = re.search(rf"{name}[ =](\S+)", command)
    assert match, f"no {name} in: {command}"
    return match.group(1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_validates_the_config_as_the_launcher_prepares_it(path: Path) -> None:
    # What `ray up` does before it launches anything: merge the provider's defaults (the local
    # provider also turns min/max_workers into its node type), then Ray's schema (ray-schema.json)
    # and its consistency checks.
    validate_config(prepare_config(_load(path)))


def test_the_validation_catches_a_broken_config() -> None:
    broken = copy.deepcopy(_load(AWS))
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_aws_gpu_workers_autoscale_from_zero_behind_a_cpu_head() -> None:
    config = prepare_config(_load(AWS))
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert types, "no worker node type"
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"]), "the head should be a CPU instance"
    assert head["resources"].get("CPU") == 0, "trials should not land on the head"
    for name, worker in types.items():
        assert worker["min_workers"] == 0, name
        assert 1 <= worker["max_workers"] <= config["max_workers"], name
        assert re.match(r"(g|p)\d", worker["node_config"]["InstanceType"]), f"{name} is not a GPU instance"
        assert "IamInstanceProfile" in worker["node_config"], f"{name}: trials need S3 access for checkpoints"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_project_is_installed_on_every_node_from_the_checkout(path: Path) -> None:
    config = _load(path)
    assert config["file_mounts"]["~/ssd-face-hpo"] == "."
    everywhere = _commands(config, "setup_commands")  # run on the head and on every worker
    assert any(re.search(r"pip install .*-e ~/ssd-face-hpo", c) for c in everywhere), everywhere
    excluded = set(config["rsync_exclude"])
    assert {".git", ".venv", "data", "ray_results", "mlruns"} <= excluded, excluded


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_token_auth_is_on_for_every_node_and_nothing_listens_publicly(path: Path) -> None:
    text, config = path.read_text(), _load(path)
    assert "0.0.0.0" not in text
    assert not re.search(r"RAY_AUTH_MODE=(?!token\b)", text), "token auth must not be switched off"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in _commands(config, "head_start_ray_commands", "worker_start_ray_commands") if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    head_start = next(c for c in starts if "--head" in c)
    assert _flag(head_start, "--dashboard-host") == "127.0.0.1"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_head_runs_mlflow_on_loopback_with_a_database_and_shared_artifacts(path: Path) -> None:
    config = _load(path)
    server = _mlflow_server(config)
    assert _flag(server, "--host") == "127.0.0.1"
    assert _flag(server, "--backend-store-uri").startswith(("sqlite:///", "postgresql://", "mysql://"))
    artifacts = _flag(server, "--artifacts-destination")
    if config["provider"]["type"] == "aws":
        assert artifacts.startswith("s3://")
    else:  # on the NFS share that setup checks is mounted on every host
        (mount,) = re.findall(r"mountpoint -q (\S+)", " ".join(_commands(config, "setup_commands")))
        assert artifacts.startswith(mount.rstrip("/") + "/"), (artifacts, mount)


def test_onprem_lists_its_gpu_hosts_and_keeps_them() -> None:
    raw = _load(ONPREM)
    assert raw["provider"]["type"] == "local"
    hosts = raw["provider"]["worker_ips"]
    assert hosts and raw["provider"]["head_ip"] not in hosts
    (node_type,) = prepare_config(raw)["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(hosts)
