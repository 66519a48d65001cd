"""The cluster's security group, exactly as ``cluster.yaml`` says: ``python cluster/security_group.py``.

Every node of ``cluster.yaml`` is in one security group (``provider.security_group.GroupName``)
whose inbound rules must be exactly:

* all traffic from members of the group itself: Ray's node-to-node ports (GCS, raylets, object
  managers, the workers' gRPC servers, SSH from the head to the workers it sets up); and
* the group's ``IpPermissions`` in ``cluster.yaml``: SSH from the CIDR on its ``# EDIT`` line.

Ray's AWS launcher (2.60, ``ray/autoscaler/_private/aws/config.py``) cannot be told that alone:
it writes a group's rules only when the group has none, and then adds SSH from anywhere to the
two above (``_create_default_inbound_rules``); it never changes the rules of a group that has
some. Hence this script, run from the repository root before the first ``ray up`` and after each
change of the CIDR:

    python cluster/security_group.py              # cluster.yaml: create or correct the group

It creates the group (if missing) in the VPC Ray will launch into (that of the node types'
``SubnetIds``, else Ray's own choice: the first available subnet that maps public IPs, in the
first listed availability zone that has one), then authorizes the missing rules and revokes every
other one. Ray then finds the group with rules and uses it as it is.

The head runs it again (``head_setup_commands``) on the config ``ray up`` wrote there
(``~/ray_bootstrap_config.yaml``, whose node types name the groups' ids): a group that Ray created
itself, because this script was not run first, loses its SSH-from-anywhere rule within minutes of
the head's start. The head's instance profile (Ray's ``ray-autoscaler-v1``) may change EC2
security groups; the workers' (``cluster/worker-s3-policy.json``) may not.

Needs boto3 and AWS credentials (those ``ray up`` uses; on the head, its instance profile).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

#: An inbound rule reduced to one source: (protocol, from port, to port, source kind, source).
Rule = tuple[str, int | None, int | None, str, str]
SOURCE_KEYS = {"cidr": ("IpRanges", "CidrIp"), "cidr6": ("Ipv6Ranges", "CidrIpv6"),
               "group": ("UserIdGroupPairs", "GroupId"), "prefix": ("PrefixListIds", "PrefixListId")}  # fmt: skip
#: The documentation ranges (RFC 5737): cluster.yaml's placeholder, never a real client.
PLACEHOLDERS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
DESCRIPTION = "ssd-face-hpo Ray nodes: all traffic within the group, SSH from the cluster.yaml CIDR"


class ConfigError(ValueError):
    """cluster.yaml's security group section is missing, or opens the cluster to the world."""


def load_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # ~/ray_bootstrap_config.yaml is JSON: YAML reads it


def section(config: dict) -> dict:
    group = config.get("provider", {}).get("security_group") or {}
    if not group.get("GroupName") or not group.get("IpPermissions"):
        raise ConfigError("cluster.yaml: provider.security_group needs a GroupName and IpPermissions (SSH from your CIDR)")
    return group


def user_rules(config: dict) -> set[Rule]:
    """cluster.yaml's IpPermissions as rules; refuses a rule from everywhere and the placeholder."""
    rules = rules_of(section(config)["IpPermissions"])
    for _, _, _, kind, source in rules:
        if kind not in ("cidr", "cidr6"):
            continue
        network = ipaddress.ip_network(source, strict=False)
        if network.prefixlen == 0:
            raise ConfigError(f"cluster.yaml: {source} opens the rule to every address; give your own CIDR")
        if any(network.subnet_of(p) for p in PLACEHOLDERS if p.version == network.version):
            raise ConfigError(
                f"cluster.yaml: {source} is the placeholder: put the address you run `ray up` from on the # EDIT line"
            )
    return rules


def desired_rules(config: dict, members: Iterable[str]) -> set[Rule]:
    """Within the cluster's group(s), everything; from outside, cluster.yaml's rules only."""
    return {("-1", None, None, "group", g) for g in members} | user_rules(config)


def rules_of(permissions: Iterable[dict]) -> set[Rule]:
    """EC2 IpPermissions (as boto3 takes and returns them) -> one rule per source."""
    rules = set()
    for perm in permissions:
        protocol = str(perm["IpProtocol"])
        ports = (None, None) if protocol == "-1" else (perm.get("FromPort"), perm.get("ToPort"))
        for kind, (list_key, value_key) in SOURCE_KEYS.items():
            for source in perm.get(list_key, []):
                rules.add((protocol, *ports, kind, source[value_key]))
    return rules


def permissions_of(rules: Iterable[Rule]) -> list[dict]:
    """One rule per source -> EC2 IpPermissions."""
    permissions = []
    for protocol, from_port, to_port, kind, source in sorted(rules, key=str):
        list_key, value_key = SOURCE_KEYS[kind]
        perm: dict[str, Any] = {"IpProtocol": protocol, list_key: [{value_key: source}]}
        if protocol != "-1":
            perm.update(FromPort=from_port, ToPort=to_port)
        permissions.append(perm)
    return permissions


def launch_vpc(ec2: Any, config: dict) -> str:
    """The VPC ``ray up`` launches the nodes into (see the module's doc)."""
    subnet_ids = [s for t in config["available_node_types"].values() for s in t["node_config"].get("SubnetIds", [])]
    if subnet_ids:
        return ec2.describe_subnets(SubnetIds=subnet_ids[:1])["Subnets"][0]["VpcId"]
    provider = config["provider"]
    internal = provider.get("use_internal_ips", False)
    subnets = [s for s in ec2.describe_subnets()["Subnets"]
               if s["State"] == "available" and (internal or s.get("MapPublicIpOnLaunch"))]  # fmt: skip
    subnets.sort(key=lambda s: s["AvailabilityZone"], reverse=True)  # Ray's order, then its AZ list's
    if provider.get("availability_zone"):
        zones = [z.strip() for z in provider["availability_zone"].split(",")]
        subnets = [s for zone in zones for s in subnets if s["AvailabilityZone"] == zone]
    if not subnets:
        raise ConfigError("no usable subnet (available, public IPs on launch) in the configured availability zones")
    return subnets[0]["VpcId"]


def find_or_create(ec2: Any, config: dict) -> list[str]:
    """The groups' ids: those the node types name (the head's bootstrap config), else the group
    named in cluster.yaml in the launch VPC, created when missing."""
    named = sorted({g for t in config["available_node_types"].values() for g in t["node_config"].get("SecurityGroupIds", [])})
    if named:
        return named
    name, vpc = section(config)["GroupName"], launch_vpc(ec2, config)
    filters = [{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    found = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    if found:
        return [found[0]["GroupId"]]
    created = ec2.create_security_group(GroupName=name, Description=DESCRIPTION, VpcId=vpc)
    print(f"created security group {name} ({created['GroupId']}) in {vpc}")
    return [created["GroupId"]]


def converge(ec2: Any, config: dict, group_id: str, members: Iterable[str]) -> tuple[set[Rule], set[Rule]]:
    """Authorize what cluster.yaml asks and is missing, revoke everything else; (added, removed).

    ``members``: the ids of all the cluster's groups (one, unless node types name their own).
    """
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    current, desired = rules_of(group.get("IpPermissions", [])), desired_rules(config, members)
    missing, extra = desired - current, current - desired
    if missing:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=permissions_of(missing))
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=permissions_of(extra))
    return missing, extra


def main(argv: list[str] | None = None, ec2: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="cluster.yaml", type=Path,
                        help="cluster.yaml, or on the head ~/ray_bootstrap_config.yaml (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    config = load_config(args.config.expanduser())
    try:
        user_rules(config)  # refuse a bad section before any AWS call
        if ec2 is None:
            import boto3

            ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
        members = find_or_create(ec2, config)
        for group_id in members:
            added, removed = converge(ec2, config, group_id, members)
            for verb, rules in (("authorized", added), ("revoked", removed)):
                for rule in sorted(rules, key=str):
                    print(f"{group_id}: {verb} {rule}")
            print(f"{group_id}: inbound = within the group + {sorted(user_rules(config), key=str)}")
    except ConfigError as exc:
        print(f"security_group.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
