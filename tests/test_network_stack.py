"""NetworkStack, for both Stages: the seed's assertions plus the address plan and the security-group matrix."""

from __future__ import annotations

import json

import pytest

SECURITY_GROUPS = {
    "alb": "AlbSecurityGroup",
    "services": "EcsServicesSecurityGroup",
    "workspaces": "EcsWorkspacesSecurityGroup",
    "rds": "RdsSecurityGroup",
    "redis": "RedisSecurityGroup",
    "efs": "EfsSecurityGroup",  # the workspaces' file system
    "platform_efs": "PlatformEfsSecurityGroup",
    "db_bootstrap": "DbBootstrapSecurityGroup",
    "langfuse": "LangfuseSecurityGroup",
    "clickhouse": "ClickHouseSecurityGroup",
    "smoke_probe": "SmokeProbeSecurityGroup",
    "endpoints": "VpcEndpoints",
}


@pytest.fixture
def network(assembly, stage):
    return assembly.stack(stage, "Network")


def _group_names(template) -> dict[str, str]:
    """logical id -> short name (alb, services, ...)."""
    return {template.logical_id(f"/Network/{cid}/Resource"): name for name, cid in SECURITY_GROUPS.items()}


def _peer(rule: dict, names: dict[str, str], key: str) -> str:
    if key in rule:
        return names[rule[key]["Fn::GetAtt"][0]]
    return rule.get("CidrIp", "?")


def _rules(template, direction: str) -> set[tuple]:
    """Every rule as (group, protocol, from_port, to_port, peer), inline or standalone; CDK's 'disallow all'
    placeholder egress (icmp 252-86 to 255.255.255.255/32) is dropped: it matches no traffic."""
    names = _group_names(template)
    peer_key = "SourceSecurityGroupId" if direction == "Ingress" else "DestinationSecurityGroupId"
    rules = set()
    for lid, props in ((lid, r["Properties"]) for lid, r in template.of_type("AWS::EC2::SecurityGroup").items()):
        for rule in props.get(f"SecurityGroup{direction}", []):
            rules.add((names[lid], rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort"), _peer(rule, names, peer_key)))
    for props in template.props(f"AWS::EC2::SecurityGroup{direction}"):
        group = names[props["GroupId"]["Fn::GetAtt"][0]]
        rules.add((group, props["IpProtocol"], props.get("FromPort"), props.get("ToPort"), _peer(props, names, peer_key)))
    return {r for r in rules if r[4] != "255.255.255.255/32"}


# --- the seed's NetworkStack test, per stage ---------------------------------------------------------------------


def test_vpc_cidr_and_dns(network, env_config):
    vpc = network.one("AWS::EC2::VPC")
    assert vpc["CidrBlock"] == env_config.network.vpc_cidr
    assert vpc["EnableDnsSupport"] is True
    assert vpc["EnableDnsHostnames"] is True


def test_six_subnets_one_nat_one_igw(network):
    assert len(network.of_type("AWS::EC2::Subnet")) == 6
    assert len(network.of_type("AWS::EC2::NatGateway")) == 1
    assert len(network.of_type("AWS::EC2::InternetGateway")) == 1


def test_cloud_map_namespace(network, env_config):
    assert network.one("AWS::ServiceDiscovery::PrivateDnsNamespace")["Name"] == f"coder-{env_config.name}.local"


def test_s3_gateway_endpoint(network):
    gateways = [p for p in network.props("AWS::EC2::VPCEndpoint") if p.get("VpcEndpointType") == "Gateway"]
    assert [g["ServiceName"] for g in gateways] == [
        {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]}
    ]
    # Reachable from the app and data tiers (two route tables each), not only the public one.
    assert len(gateways[0]["RouteTableIds"]) == 4


# --- the address plan --------------------------------------------------------------------------------------------


def test_subnet_cidrs_per_tier_and_az(network, env_config):
    net = env_config.network
    by_path = {}
    for resource in network.of_type("AWS::EC2::Subnet").values():
        path = resource["Metadata"]["aws:cdk:path"]
        props = resource["Properties"]
        by_path[path.split("/Vpc/")[1].split("/")[0]] = (props["CidrBlock"], props["AvailabilityZone"])
    expected = {}
    for tier, cidrs in (("Public", net.public_subnet_cidrs), ("PrivateApp", net.app_subnet_cidrs),
                        ("PrivateData", net.data_subnet_cidrs)):
        for index, (cidr, az) in enumerate(zip(cidrs, net.availability_zones, strict=True), start=1):
            expected[f"{tier}Subnet{index}"] = (cidr, az)
    assert by_path == expected


def test_public_subnets_do_not_assign_public_ips(network):
    for props in network.props("AWS::EC2::Subnet"):
        assert props["MapPublicIpOnLaunch"] is False


def test_data_subnets_have_no_internet_route(network):
    routes = network.props("AWS::EC2::Route")
    tables = {lid: r["Metadata"]["aws:cdk:path"] for lid, r in network.of_type("AWS::EC2::RouteTable").items()}
    for route in routes:
        table_path = tables[route["RouteTableId"]["Ref"]]
        if "PrivateData" in table_path:
            raise AssertionError(f"data subnet route table {table_path} has a default route: {route}")
        if "PrivateApp" in table_path:
            assert "NatGatewayId" in route, route
        if "/Public" in table_path:
            assert "GatewayId" in route, route


def test_interface_endpoints(network, env_config):
    interfaces = [p for p in network.props("AWS::EC2::VPCEndpoint") if p.get("VpcEndpointType") == "Interface"]
    services = sorted(p["ServiceName"].removeprefix(f"com.amazonaws.{env_config.region}.") for p in interfaces)
    assert services == sorted(
        ["ecr.api", "ecr.dkr", "secretsmanager", "logs", "sts", "bedrock-runtime", "ecs", "elasticfilesystem", "ssm"]
    )
    assert len(interfaces) == 9
    endpoints_sg = network.logical_id("/Network/VpcEndpoints/Resource")
    for props in interfaces:
        assert props["PrivateDnsEnabled"] is True
        assert props["SecurityGroupIds"] == [{"Fn::GetAtt": [endpoints_sg, "GroupId"]}]


# --- the security-group matrix ----------------------------------------------------------------------------------


def test_security_group_count(network):
    # The seed's six, one shared by the interface endpoints, one for the database bootstrap Lambda, and Langfuse
    # and ClickHouse apart from the other services so that ClickHouse admits Langfuse only, the smoke probe, and the
    # platform's file system (no workspace reaches it).
    assert len(network.of_type("AWS::EC2::SecurityGroup")) == 12


def test_ingress_matrix(network, env_config):
    """The seed's rules, except that the ALB no longer reaches ClickHouse (8123/9000) or the Langfuse worker (3030):
    Langfuse has its own group (3000 from the ALB only), ClickHouse admits Langfuse only. LiteLLM's traces and the
    Key Provisioner's calls to LiteLLM go through the ALB over HTTPS, so no service reaches another directly."""
    vpc = env_config.network.vpc_cidr
    from_alb = {("services", "tcp", p, p, "alb") for p in (7080, 4000, 8100)}
    expected = from_alb | {
        ("langfuse", "tcp", 3000, 3000, "alb"),
        ("alb", "tcp", 443, 443, "smoke_probe"),
        ("clickhouse", "tcp", 8123, 8123, "langfuse"),
        ("clickhouse", "tcp", 9000, 9000, "langfuse"),
        ("platform_efs", "tcp", 2049, 2049, "clickhouse"),
        ("efs", "tcp", 2049, 2049, "clickhouse"),  # its data where earlier releases kept it, copied once
        ("rds", "tcp", 5432, 5432, "langfuse"),
        ("redis", "tcp", 6379, 6379, "langfuse"),
        ("alb", "tcp", 443, 443, vpc),
        ("alb", "tcp", 8443, 8443, vpc),  # workspace direct access, its own listener (feature flag, on here)
        ("services", "tcp", 4000, 4000, "workspaces"),  # the workspaces' LiteLLM egress, as ingress on services
        ("workspaces", "tcp", 13337, 13337, "alb"),
        ("rds", "tcp", 5432, 5432, "services"),
        ("rds", "tcp", 5432, 5432, "db_bootstrap"),
        ("redis", "tcp", 6379, 6379, "services"),
        ("platform_efs", "tcp", 2049, 2049, "services"),  # Coder's configuration
        ("efs", "tcp", 2049, 2049, "workspaces"),  # and no platform service but ClickHouse, for the move
        ("endpoints", "tcp", 443, 443, vpc),
    }
    assert _rules(network, "Ingress") == expected


def test_egress_matrix(network, env_config):
    vpc = env_config.network.vpc_cidr
    anywhere = "0.0.0.0/0"
    to_services = {("alb", "tcp", p, p, "services") for p in (7080, 4000, 8100)}
    expected = to_services | {
        ("alb", "tcp", 3000, 3000, "langfuse"),
        ("langfuse", "tcp", 443, 443, anywhere),
        ("langfuse", "tcp", 8123, 8123, "clickhouse"),
        ("langfuse", "tcp", 9000, 9000, "clickhouse"),
        ("langfuse", "tcp", 5432, 5432, "rds"),
        ("langfuse", "tcp", 6379, 6379, "redis"),
        ("clickhouse", "tcp", 443, 443, anywhere),
        ("clickhouse", "tcp", 2049, 2049, "platform_efs"),
        ("clickhouse", "tcp", 2049, 2049, "efs"),
        ("smoke_probe", "tcp", 443, 443, "alb"),  # and nothing else
        ("alb", "tcp", 443, 443, anywhere),  # authenticate-oidc to the identity provider
        ("alb", "tcp", 13337, 13337, "workspaces"),
        ("services", "tcp", 443, 443, anywhere),
        ("services", "tcp", 5432, 5432, "rds"),
        ("services", "tcp", 6379, 6379, "redis"),
        ("services", "tcp", 2049, 2049, "platform_efs"),
        ("workspaces", "tcp", 4000, 4000, "services"),
        ("workspaces", "tcp", 443, 443, anywhere),
        ("workspaces", "tcp", 53, 53, anywhere),
        ("workspaces", "udp", 53, 53, anywhere),
        ("workspaces", "tcp", 2049, 2049, "efs"),
        ("db_bootstrap", "tcp", 5432, 5432, "rds"),
        ("db_bootstrap", "tcp", 443, 443, vpc),  # Secrets Manager's interface endpoint
    }
    # rds, redis, both file systems and the endpoints send nothing.
    assert _rules(network, "Egress") == expected


def test_no_ingress_from_the_internet(network):
    for rule in _rules(network, "Ingress"):
        assert rule[4] != "0.0.0.0/0", rule


def test_the_platform_file_system_admits_no_workspace(network):
    admitted = {rule[4] for rule in _rules(network, "Ingress") if rule[0] == "platform_efs"}
    assert admitted == {"services", "clickhouse"}
    assert not any(rule[4] == "platform_efs" for rule in _rules(network, "Egress") if rule[0] == "workspaces")


def test_clickhouse_admits_langfuse_only(network):
    clickhouse = {rule for rule in _rules(network, "Ingress") if rule[0] == "clickhouse"}
    assert clickhouse == {("clickhouse", "tcp", 8123, 8123, "langfuse"), ("clickhouse", "tcp", 9000, 9000, "langfuse")}
    reaching = {rule[0] for rule in _rules(network, "Egress") if rule[4] == "clickhouse"}
    assert reaching == {"langfuse"}


def _effective_egress(template, group_id: str) -> list[tuple]:
    """What a group may send: its inline rules, or CloudFormation's default allow-all when it has none, plus its
    rules that are resources of their own."""
    props = template.resources[group_id]["Properties"]
    inline = props.get("SecurityGroupEgress") or [{"IpProtocol": "-1", "CidrIp": "0.0.0.0/0"}]
    separate = [p for p in template.props("AWS::EC2::SecurityGroupEgress") if p["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}]
    return [(r["IpProtocol"], r.get("FromPort"), r.get("ToPort"), r.get("CidrIp") or json.dumps(r.get("DestinationSecurityGroupId")))
            for r in [*inline, *separate]]


def test_no_group_falls_back_to_cloudformations_allow_all_egress(assembly):
    for template in assembly.templates.values():
        for group_id in template.of_type("AWS::EC2::SecurityGroup"):
            assert ("-1", None, None, "0.0.0.0/0") not in _effective_egress(template, group_id), (
                f"{template.stack_name}/{group_id} may send anything")


def test_smoke_probe_sends_https_to_the_alb_only(network):
    probe = network.logical_id("/Network/SmokeProbeSecurityGroup/Resource")
    alb = network.logical_id("/Network/AlbSecurityGroup/Resource")
    effective = set(_effective_egress(network, probe))
    assert effective == {("icmp", 252, 86, "255.255.255.255/32"),  # matches no packet
                         ("tcp", 443, 443, json.dumps({"Fn::GetAtt": [alb, "GroupId"]}))}
