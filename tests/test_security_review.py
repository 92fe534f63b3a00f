"""The independent security review's findings, each checked on the synthesized templates (issue: security hardening)."""

from __future__ import annotations

import json

import pytest

from config.loader import parse_config
from tests.test_config import BASE


def _secret_ref(value_from):
    """A container secret's ValueFrom without its `:json-key::` suffix: the secret it reads."""
    if isinstance(value_from, dict) and "Fn::Join" in value_from:
        parts = value_from["Fn::Join"][1]
        assert len(parts) == 2 and parts[1].startswith(":") and parts[1].endswith("::"), value_from
        return json.dumps(parts[0], sort_keys=True)
    return json.dumps(value_from, sort_keys=True)


def _as_list(value):
    return value if isinstance(value, list) else [value]


# --- 4. every service reads exactly its own secrets -----------------------------------------------------------------


def test_each_service_has_an_execution_role_reading_exactly_its_containers_secrets(assembly, stage, env_config):
    roles_seen = set()
    for layer in ("Platform", "Observability"):
        template = assembly.stack(stage, layer)
        for lid, task in template.of_type("AWS::ECS::TaskDefinition").items():
            props = task["Properties"]
            role_id = props["ExecutionRoleArn"]["Fn::GetAtt"][0]
            assert role_id not in roles_seen, f"{lid} shares its execution role"
            roles_seen.add(role_id)
            received = {_secret_ref(s["ValueFrom"]) for c in props["ContainerDefinitions"] for s in c.get("Secrets", [])}
            policies = [p for p in template.props("AWS::IAM::Policy") if {"Ref": role_id} in p["Roles"]]
            statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
            readable = {json.dumps(r, sort_keys=True) for s in statements
                        if "secretsmanager:GetSecretValue" in _as_list(s["Action"]) for r in _as_list(s["Resource"])}
            assert readable == received, f"{stage}-{layer}/{lid}"
            assert "PostgresMasterSecret" not in json.dumps(statements)
            assert not any("secret:" in json.dumps(r) and "*" in json.dumps(r) for r in readable)
            for statement in statements:
                if "kms:Decrypt" in _as_list(statement["Action"]):
                    assert statement["Condition"]["StringEquals"]["kms:ViaService"].startswith("secretsmanager.")
            role = template.resources[role_id]["Properties"]
            assert "ManagedPolicyArns" not in role  # no AWS-wide execution policy: its own grants only
    # Coder, LiteLLM, Key Provisioner, ClickHouse, Langfuse web and worker (and web replicas where configured)
    assert len(roles_seen) == 6 + (env_config.services.langfuse_web_desired_count > 1)


def test_no_role_of_any_stack_but_the_bootstrap_reads_the_master_login(assembly, stage):
    for layer in ("Network", "Data", "Platform", "Observability"):
        template = assembly.stack(stage, layer)
        for lid, policy in template.of_type("AWS::IAM::Policy").items():
            if "PostgresMasterSecret" in json.dumps(policy["Properties"]["PolicyDocument"]):
                assert "/AppDatabases/" in policy["Metadata"]["aws:cdk:path"] or "/Rotation" in policy["Metadata"][
                    "aws:cdk:path"], f"{lid} reads the RDS master login"


# --- 5. ECS Exec per environment ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("production_setting", "expected"),
    [(None, {"staging": True, "production": False}), ("false", {"staging": True, "production": False}),
     ("true", {"staging": True, "production": True})],
)
def test_ecs_exec_is_off_in_production_unless_configured(production_setting, expected):
    text = BASE
    marker = "enable_ecs_exec = false\n"
    assert text.count(marker) == 1
    text = text.replace(marker, "" if production_setting is None else f"enable_ecs_exec = {production_setting}\n")
    config = parse_config(text, "test.toml")
    assert {e.name: e.ecs_exec for e in config.environments} == expected


def test_production_services_have_no_shell_access(assembly):
    for layer in ("Platform", "Observability"):
        template = assembly.stack("Production", layer)
        services = template.props("AWS::ECS::Service")
        assert services and all(s["EnableExecuteCommand"] is False for s in services)
        assert "ssmmessages:" not in json.dumps(template.props("AWS::IAM::Policy"))
        assert template.props("AWS::IAM::ManagedPolicy") == []


# --- 1. Coder cannot rewrite the platform's routing --------------------------------------------------------------


def _role_statements(template, role_path: str) -> list[dict]:
    (policy,) = [r["Properties"] for r in template.of_type("AWS::IAM::Policy").values()
                 if r["Metadata"]["aws:cdk:path"].endswith(f"/{role_path}/DefaultPolicy/Resource")]
    return policy["PolicyDocument"]["Statement"]


def _load_balancer_writes(statements) -> list[dict]:
    return [s for s in statements if any(a.startswith("elasticloadbalancing:") and not a.startswith(
        "elasticloadbalancing:Describe") for a in _as_list(s["Action"]))]


def test_coder_adds_rules_only_to_a_listener_without_platform_routes(assembly, stage, env_config):
    platform = assembly.stack(stage, "Platform")
    main = platform.logical_id("/Platform/LoadBalancing/LoadBalancer/Https/Resource")
    direct = platform.logical_id("/Platform/LoadBalancing/LoadBalancer/WorkspaceDirectAccess/Resource")
    statements = _role_statements(platform, "Coder/TaskRole")
    assert main not in json.dumps(statements)
    writes = {action: s for s in _load_balancer_writes(statements) for action in _as_list(s["Action"])}
    assert writes["elasticloadbalancing:CreateRule"]["Resource"] == {"Ref": direct}
    rules = f"arn:aws:elasticloadbalancing:{env_config.region}:{env_config.account}:listener-rule/app/*"
    for action in ("elasticloadbalancing:ModifyRule", "elasticloadbalancing:DeleteRule"):
        assert writes[action]["Resource"] == rules
        assert writes[action]["Condition"] == {"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}
    rule_tags = [s for s in _load_balancer_writes(statements) if "elasticloadbalancing:AddTags" in _as_list(s["Action"])
                 and rules in _as_list(s["Resource"])]
    assert [s["Condition"] for s in rule_tags] == [{"StringEquals": {"elasticloadbalancing:CreateAction": "CreateRule"}}]
    rule_statements = [s for s in _load_balancer_writes(statements) if "Rule" in json.dumps(s["Action"])]
    for statement in _load_balancer_writes(statements):
        if statement not in rule_tags and statement not in rule_statements:  # target groups: Coder's own only
            assert statement["Resource"] == f"arn:aws:elasticloadbalancing:{env_config.region}:{env_config.account}:targetgroup/ws-*/*"
    # The direct-access listener: HTTPS on 8443, 404 by default, no rule of the platform's.
    listener = platform.resources[direct]["Properties"]
    assert (listener["Port"], listener["Protocol"]) == (8443, "HTTPS")
    assert listener["DefaultActions"][0]["FixedResponseConfig"]["StatusCode"] == "404"
    for layer in ("Platform", "Observability"):
        for rule in assembly.stack(stage, layer).props("AWS::ElasticLoadBalancingV2::ListenerRule"):
            assert direct not in json.dumps(rule["ListenerArn"]), "a platform route on the direct-access listener"
    params = {p["Name"]: p["Value"] for p in platform.props("AWS::SSM::Parameter")}
    assert params[f"/coder-{env_config.name}/alb-listener-arn"] == {"Ref": direct}
    network = assembly.stack(stage, "Network")
    alb = network.resources[network.logical_id("/Network/AlbSecurityGroup/Resource")]["Properties"]
    assert {(r["FromPort"], r["CidrIp"]) for r in alb["SecurityGroupIngress"]} == {
        (443, env_config.network.vpc_cidr), (8443, env_config.network.vpc_cidr)}


def test_without_direct_access_coder_has_no_load_balancer_rights(three_environments):
    platform = three_environments.stack("Dev", "Platform")
    assert _load_balancer_writes(_role_statements(platform, "Coder/TaskRole")) == []
    assert [p["Port"] for p in platform.props("AWS::ElasticLoadBalancingV2::Listener")] == [443]
    assert not [p for p in platform.props("AWS::SSM::Parameter") if p["Name"].endswith("alb-listener-arn")]
    network = three_environments.stack("Dev", "Network")
    alb = network.resources[network.logical_id("/Network/AlbSecurityGroup/Resource")]["Properties"]
    assert [r["FromPort"] for r in alb["SecurityGroupIngress"]] == [443]


# --- 8. prompts and credentials cross the VPC over TLS only ------------------------------------------------------


def _environment(template, service: str) -> dict[str, str]:
    (task,) = [r["Properties"] for r in template.of_type("AWS::ECS::TaskDefinition").values()
               if f"/{service}/Service/TaskDefinition/" in r["Metadata"]["aws:cdk:path"]]
    return {e["Name"]: e["Value"] for c in task["ContainerDefinitions"] for e in c.get("Environment", [])}


def test_traces_and_the_master_key_travel_over_https_through_the_alb(assembly, stage, env_config):
    platform = assembly.stack(stage, "Platform")
    assert _environment(platform, "LiteLLM")["LANGFUSE_OTEL_HOST"] == f"https://langfuse.{env_config.domain}"
    assert _environment(platform, "KeyProvisioner")["LITELLM_URL"] == f"https://ai.{env_config.domain}"
    network = assembly.stack(stage, "Network")
    group = {network.logical_id(f"/Network/{cid}/Resource"): name for name, cid in (
        ("langfuse", "LangfuseSecurityGroup"), ("services", "EcsServicesSecurityGroup"), ("alb", "AlbSecurityGroup"))}
    peers = {(group.get(p["GroupId"]["Fn::GetAtt"][0]), group.get(p["SourceSecurityGroupId"]["Fn::GetAtt"][0]), p["FromPort"])
             for p in network.props("AWS::EC2::SecurityGroupIngress") if "SourceSecurityGroupId" in p}
    assert ("langfuse", "services", 3000) not in peers  # no plain-HTTP path from LiteLLM to Langfuse
    assert ("services", "services", 4000) not in peers  # nor from the Key Provisioner to LiteLLM
    assert ("langfuse", "alb", 3000) in peers and ("services", "alb", 4000) in peers


# --- 7. no deploy can replace an operator-supplied secret --------------------------------------------------------

OPERATOR_SUPPLIED = {"CoderOidcSecret": "client_secret", "AnthropicApiKeySecret": "", "CustomLlmApiKeySecret": ""}


def test_operator_supplied_secrets_carry_no_generator_and_get_a_placeholder_once(assembly, stage):
    data = assembly.stack(stage, "Data")
    placeholders = {p["SecretId"]["Ref"]: p["Placeholder"] for p in data.props("Custom::SecretFields") if "Placeholder" in p}
    for construct_id, field in OPERATOR_SUPPLIED.items():
        lid = data.logical_id(f"/Data/Secrets/{construct_id}/Resource")
        props = data.resources[lid]["Properties"]
        assert "GenerateSecretString" not in props and "SecretString" not in props, construct_id
        assert props["Description"].startswith("OPERATOR-SUPPLIED")
        assert placeholders.pop(lid) == {"Field": field, "Length": 32}
    assert placeholders == {}
    # Every other secret keeps what makes its value (a generator, or formatted fields filled once).
    for lid, secret in data.of_type("AWS::SecretsManager::Secret").items():
        if not any(lid.startswith(c) for c in OPERATOR_SUPPLIED):
            assert "GenerateSecretString" in secret["Properties"], lid


def test_each_operator_secret_says_the_shape_its_readers_expect(assembly):
    """A person puts these by hand: the description says JSON with the field the stacks read (the OIDC client secret,
    read by Coder's task, Langfuse and the admin rule as `<secret>:client_secret::`), or a plain string."""
    readers = json.dumps([assembly.stack("Production", layer).body for layer in ("Platform", "Observability")])
    data = assembly.stack("Production", "Data")
    for construct_id, field in OPERATOR_SUPPLIED.items():
        description = data.resources[data.logical_id(f"/Data/Secrets/{construct_id}/Resource")]["Properties"]["Description"]
        if field:
            assert f'{{"{field}": ' in description and f":{field}::" in readers, construct_id
        else:
            assert "as a plain string (not JSON)" in description, construct_id
