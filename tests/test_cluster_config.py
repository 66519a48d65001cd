"""``cluster.yaml`` (AWS) and ``cluster-onprem.yaml`` (local provider): valid for Ray's own cluster
launcher, and the properties the search relies on: GPU workers from 0, the project on every node,
shared storage, an MLflow server on the head reachable through a forwarded port only, token auth on.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import re
import subprocess
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


# --- Cluster security (cluster.yaml's security group, the workers' instance profile) -------------

CLUSTER_DIR = REPO / "cluster"
WORKER_PROFILE = "ssd-face-hpo-worker"
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def _security_group_script():
    spec = importlib.util.spec_from_file_location("security_group", CLUSTER_DIR / "security_group.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hpo_bucket() -> str:
    """HPO_BUCKET as the README's aws commands read it from cluster.yaml (the one place it is set)."""
    cmd = ["sed", "-n", r"s/.*export HPO_BUCKET=\([^' ]*\).*/\1/p", str(AWS)]
    (bucket,) = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return bucket


def test_aws_nodes_accept_ssh_from_the_edit_cidr_and_nothing_else_from_outside() -> None:
    config = prepare_config(_load(AWS))
    group = config["provider"]["security_group"]
    assert group["GroupName"]
    (rule,) = group["IpPermissions"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
    assert set(rule) == {"IpProtocol", "FromPort", "ToPort", "IpRanges"}, "IPv6, prefix lists or groups from outside"
    (cidr,) = [r["CidrIp"] for r in rule["IpRanges"]]
    assert ipaddress.ip_network(cidr, strict=False).prefixlen > 0, "SSH from the whole internet"
    (line,) = [line for line in AWS.read_text().splitlines() if cidr in line]
    assert "# EDIT" in line, "the CIDR is the user's to set, on a line marked # EDIT"
    # No node type picks its own groups: Ray puts every node in the group named above.
    for name, node_type in config["available_node_types"].items():
        assert "SecurityGroupIds" not in node_type["node_config"], name
    # Ray adds SSH from anywhere when it creates the group itself: the head corrects it at setup.
    head_setup = _commands(config, "head_setup_commands")
    assert "python ~/ssd-face-hpo/cluster/security_group.py ~/ray_bootstrap_config.yaml" in head_setup


def test_aws_workers_get_the_bucket_scoped_profile_not_rays() -> None:
    config = prepare_config(_load(AWS))
    head = config["available_node_types"][config["head_node_type"]]
    assert "IamInstanceProfile" not in head["node_config"], "the head keeps Ray's own (it launches the workers)"
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        profile = node_type["node_config"]["IamInstanceProfile"]
        assert profile == {"Name": WORKER_PROFILE}, (name, profile)


def test_the_worker_policy_reads_and_writes_the_bucket_and_nothing_else() -> None:
    policy = json.loads((CLUSTER_DIR / "worker-s3-policy.json").read_text())
    bucket = _hpo_bucket()
    policy = json.loads(json.dumps(policy).replace("BUCKET", bucket))  # as the README's command does
    granted: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {"Sid", "Effect", "Action", "Resource"}
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        for action in actions:
            assert "*" not in action, f"wildcard action {action}"
            granted.setdefault(action, set()).update(resources)
    assert granted == {
        "s3:ListBucket": {f"arn:aws:s3:::{bucket}"},
        **{action: {f"arn:aws:s3:::{bucket}/*"} for action in OBJECT_ACTIONS},
    }


def test_the_worker_role_is_for_ec2_and_the_head_may_pass_it_only() -> None:
    trust = json.loads((CLUSTER_DIR / "worker-trust-policy.json").read_text())
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "ec2.amazonaws.com"} and statement["Action"] == "sts:AssumeRole"
    pass_role = json.loads((CLUSTER_DIR / "head-pass-worker-role.json").read_text())
    (statement,) = pass_role["Statement"]
    assert statement["Action"] == "iam:PassRole"
    assert statement["Resource"].endswith(f":role/{WORKER_PROFILE}")  # the role has the profile's name
    assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"


class FakeEC2:
    """The EC2 calls cluster/security_group.py makes (boto3's argument names), on an in-memory account."""

    def __init__(self, subnets: list[dict], groups: list[dict] | None = None) -> None:
        self.subnets = subnets
        self.groups = {g["GroupId"]: g for g in groups or []}
        self.calls: list[str] = []

    def describe_subnets(self, SubnetIds: list[str] | None = None) -> dict:
        self.calls.append("describe_subnets")
        return {"Subnets": [s for s in self.subnets if SubnetIds is None or s["SubnetId"] in SubnetIds]}

    def describe_security_groups(self, Filters: list[dict] | None = None, GroupIds: list[str] | None = None) -> dict:
        self.calls.append("describe_security_groups")
        groups = [g for g in self.groups.values() if GroupIds is None or g["GroupId"] in GroupIds]
        for f in Filters or []:
            key = {"group-name": "GroupName", "vpc-id": "VpcId"}[f["Name"]]
            groups = [g for g in groups if g[key] in f["Values"]]
        return {"SecurityGroups": copy.deepcopy(groups)}

    def create_security_group(self, GroupName: str, Description: str, VpcId: str) -> dict:
        self.calls.append("create_security_group")
        group_id = f"sg-{len(self.groups) + 1:04d}"
        self.groups[group_id] = {"GroupId": group_id, "GroupName": GroupName, "VpcId": VpcId, "IpPermissions": []}
        return {"GroupId": group_id}

    def authorize_security_group_ingress(self, GroupId: str, IpPermissions: list[dict]) -> None:
        self.calls.append("authorize_security_group_ingress")
        self.groups[GroupId]["IpPermissions"] += copy.deepcopy(IpPermissions)

    def revoke_security_group_ingress(self, GroupId: str, IpPermissions: list[dict]) -> None:
        self.calls.append("revoke_security_group_ingress")
        sg = _security_group_script()
        left = sg.rules_of(self.groups[GroupId]["IpPermissions"]) - sg.rules_of(IpPermissions)
        self.groups[GroupId]["IpPermissions"] = sg.permissions_of(left)


MY_CIDR = "100.64.7.8/32"


def _subnet(subnet_id: str, vpc_id: str, zone: str, public: bool) -> dict:
    return {"SubnetId": subnet_id, "VpcId": vpc_id, "AvailabilityZone": zone, "State": "available",
            "MapPublicIpOnLaunch": public}  # fmt: skip


SUBNETS = [  # public subnets in two VPCs, a private one in a third
    _subnet("subnet-b", "vpc-other", "us-west-2b", public=True),
    _subnet("subnet-c", "vpc-default", "us-west-2c", public=True),
    _subnet("subnet-a", "vpc-default", "us-west-2a", public=True),
    _subnet("subnet-p", "vpc-private", "us-west-2a", public=False),
]


def _config_file(tmp_path: Path, cidr: str = MY_CIDR, **node_config: object) -> Path:
    """cluster.yaml with the user's CIDR set (the placeholder is refused) and node_config extras."""
    raw = AWS.read_text()
    (placeholder,) = _load(AWS)["provider"]["security_group"]["IpPermissions"][0]["IpRanges"]
    config = yaml.safe_load(raw.replace(placeholder["CidrIp"], cidr))
    for node_type in config["available_node_types"].values():
        node_type["node_config"].update(node_config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _inbound(ec2: FakeEC2, group_id: str) -> set:
    return _security_group_script().rules_of(ec2.groups[group_id]["IpPermissions"])


def test_the_script_creates_the_group_ray_will_use_with_ssh_from_the_cidr_only(tmp_path: Path) -> None:
    ec2 = FakeEC2(SUBNETS)
    assert _security_group_script().main([str(_config_file(tmp_path))], ec2=ec2) == 0
    ((group_id, group),) = ec2.groups.items()
    name = _load(AWS)["provider"]["security_group"]["GroupName"]
    # Ray launches into the VPC of the first public subnet in the first listed zone that has one
    # (cluster.yaml lists us-west-2a first), not the first subnet the account lists.
    assert (group["GroupName"], group["VpcId"]) == (name, "vpc-default")
    assert _inbound(ec2, group_id) == {("-1", None, None, "group", group_id), ("tcp", 22, 22, "cidr", MY_CIDR)}
    # Run again: nothing to change.
    ec2.calls.clear()
    assert _security_group_script().main([str(_config_file(tmp_path))], ec2=ec2) == 0
    assert "authorize_security_group_ingress" not in ec2.calls and "revoke_security_group_ingress" not in ec2.calls


def test_the_script_revokes_what_ray_adds_and_an_old_cidr(tmp_path: Path) -> None:
    # The group as Ray creates it when it finds none (intracluster, SSH from anywhere, then
    # cluster.yaml's rules), here with an older CIDR of the user's.
    ray_made = [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-ray"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "100.64.9.9/32"}]},
    ]
    group = {"GroupId": "sg-ray", "GroupName": "ray-made", "VpcId": "vpc-default", "IpPermissions": ray_made}
    ec2 = FakeEC2(SUBNETS, [group])
    # On the head: the bootstrap config names the group's id for every node type.
    bootstrap = _config_file(tmp_path, SecurityGroupIds=["sg-ray"])
    assert _security_group_script().main([str(bootstrap)], ec2=ec2) == 0
    assert "create_security_group" not in ec2.calls
    assert _inbound(ec2, "sg-ray") == {("-1", None, None, "group", "sg-ray"), ("tcp", 22, 22, "cidr", MY_CIDR)}


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "203.0.113.7/32"], ids=["everywhere", "placeholder"])
def test_the_script_refuses_ssh_from_everywhere_and_the_unedited_placeholder(tmp_path: Path, cidr: str, capsys) -> None:
    ec2 = FakeEC2(SUBNETS)
    assert _security_group_script().main([str(_config_file(tmp_path, cidr=cidr))], ec2=ec2) == 2
    assert ec2.calls == [] and "cluster.yaml" in capsys.readouterr().err


def test_the_shipped_cluster_yaml_still_has_the_placeholder_to_edit() -> None:
    # Until the user edits it, `ray up` could not reach the nodes, and the script says why.
    script = _security_group_script()
    with pytest.raises(script.ConfigError, match="placeholder"):
        script.user_rules(_load(AWS))
