"""The Coder, LiteLLM and Key Provisioner services of the Platform layer, for both Stages: routing, health checks,
containers (ports, environment, secret names), capacity, and the IAM of each task role."""

from __future__ import annotations

import json
import re

import pytest

from constructs_lib.litellm_config import load_litellm_config
from constructs_lib.timeouts import TARGET_KEEP_ALIVE_SECONDS
from tests.assembly import ROOT
from tests.synths import VARIANT_SECRET_VERSION

SECRET_LIKE_VALUE = re.compile(r"(sk-|pk-lf-|sk-lf-)[A-Za-z0-9]{16,}|-----BEGIN|AKIA[0-9A-Z]{16}")
SECRET_LIKE_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|MASTER_KEY|SALT|ENCRYPTION_KEY|DATABASE_URL|CONNECTION_URL")


@pytest.fixture
def platform(assembly, stage):
    return assembly.stack(stage, "Platform")


def _container(platform, service: str) -> dict:
    task = platform.resources[platform.logical_id(f"/Platform/{service}/Service/TaskDefinition/Resource")]["Properties"]
    (container,) = task["ContainerDefinitions"]
    return container


def _task(platform, service: str) -> dict:
    return platform.resources[platform.logical_id(f"/Platform/{service}/Service/TaskDefinition/Resource")]["Properties"]


def _secrets(container: dict) -> dict[str, tuple[str, str | None]]:
    """NAME -> (logical id of the Data-layer secret, JSON field or None)."""
    found = {}
    for secret in container.get("Secrets", []):
        value = secret["ValueFrom"]
        if "Fn::Join" in value:
            ref, suffix = value["Fn::Join"][1]
            field = suffix.split(":")[1]
        else:
            ref, field = value, None
        output = ref["Fn::GetStackOutput"]
        assert output["StackName"].endswith("-Data")
        found[secret["Name"]] = (re.sub(r"^PublishOutputRef", "", output["OutputName"]), field)
    return found


def _secret_is(found: tuple[str, str | None], construct_id: str, field: str | None) -> bool:
    return found[0].startswith(construct_id) and found[1] == field


def _statements(platform, role_path: str) -> list[dict]:
    policy = platform.resources[platform.logical_id(f"/Platform/{role_path}/DefaultPolicy/Resource")]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _by_sid(statements: list[dict]) -> dict[str, dict]:
    return {s["Sid"]: s for s in statements if "Sid" in s}


# --- the seed's PlatformStack assertions (with DESIGN's correction: 3 target groups here, Langfuse's is in
# --- ObservabilityStack) -------------------------------------------------------------------------------------


def test_three_target_groups(platform):
    assert len(platform.of_type("AWS::ElasticLoadBalancingV2::TargetGroup")) == 3


def test_coder_service_one_task_no_launch_type(platform):
    service = platform.resources[platform.logical_id("/Platform/Coder/Service/Service/Service")]["Properties"]
    assert service["DesiredCount"] == 1
    assert "LaunchType" not in service


def test_litellm_service_two_replicas(platform):
    service = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/Service/Service")]["Properties"]
    assert service["DesiredCount"] == 2


# --- routing ---------------------------------------------------------------------------------------------------


def test_listener_rules_hosts_priorities_and_targets(platform, env_config):
    domain = env_config.domain
    target = {
        name: platform.logical_id(f"/Platform/{name}/Service/TargetGroup/Resource")
        for name in ("Coder", "LiteLLM", "KeyProvisioner")
    }
    rules = {}
    for props in platform.props("AWS::ElasticLoadBalancingV2::ListenerRule"):
        assert props["ListenerArn"] == {"Ref": platform.logical_id("/Platform/LoadBalancing/LoadBalancer/Https/Resource")}
        (condition,) = props["Conditions"]
        assert condition["Field"] == "host-header"
        forward = props["Actions"][-1]
        assert forward["Type"] == "forward"
        rules[props["Priority"]] = (condition["HostHeaderConfig"]["Values"], forward["TargetGroupArn"]["Ref"],
                                    [a["Type"] for a in props["Actions"]])
    assert rules == {
        100: ([f"coder.{domain}"], target["Coder"], ["forward"]),
        500: ([f"*.{domain}"], target["Coder"], ["forward"]),
        400: ([f"ai.{domain}"], target["LiteLLM"], ["forward"]),
        200: ([f"admin.{domain}"], target["KeyProvisioner"], ["authenticate-oidc", "forward"]),
    }


def test_admin_sign_in_uses_configured_idp_and_a_secret_reference(platform, env_config):
    (rule,) = [p for p in platform.props("AWS::ElasticLoadBalancingV2::ListenerRule") if p["Priority"] == 200]
    auth = rule["Actions"][0]
    assert auth["Order"] < rule["Actions"][1]["Order"]
    oidc = auth["AuthenticateOidcConfig"]
    assert oidc["Issuer"] == env_config.oidc.issuer_url
    assert oidc["AuthorizationEndpoint"] == env_config.oidc.authorization_endpoint
    assert oidc["TokenEndpoint"] == env_config.oidc.token_endpoint
    assert oidc["UserInfoEndpoint"] == env_config.oidc.user_info_endpoint
    assert oidc["ClientId"] == env_config.oidc.client_id
    assert oidc["OnUnauthenticatedRequest"] == "authenticate"
    prefix, ref, suffix = oidc["ClientSecret"]["Fn::Join"][1]
    assert prefix == "{{resolve:secretsmanager:" and suffix == ":SecretString:client_secret::}}"
    assert ref["Fn::GetStackOutput"]["OutputName"].startswith("PublishOutputRefCoderOidcSecret")


def test_target_groups_ports_and_health_checks(platform):
    expected = {
        "Coder": (7080, "/api/v2/buildinfo"),
        "LiteLLM": (4000, "/health/readiness"),
        "KeyProvisioner": (8100, "/health"),
    }
    for name, (port, path) in expected.items():
        group = platform.resources[platform.logical_id(f"/Platform/{name}/Service/TargetGroup/Resource")]["Properties"]
        assert (group["Port"], group["Protocol"], group["TargetType"]) == (port, "HTTP", "ip"), name
        assert group["HealthCheckPath"] == path, name
        assert group["Matcher"] == {"HttpCode": "200"}, name


# --- containers ------------------------------------------------------------------------------------------------


def test_coder_container(platform, env_config):
    task = _task(platform, "Coder")
    assert (task["Cpu"], task["Memory"]) == (str(env_config.tasks.coder.cpu), str(env_config.tasks.coder.memory_mib))
    assert task["Family"] == f"coder-{env_config.name}-coder"
    container = _container(platform, "Coder")
    assert container["Image"] == env_config.images.coder
    assert container["PortMappings"] == [{"ContainerPort": 7080, "Name": "coder", "Protocol": "tcp"}]
    domain = env_config.domain
    assert {e["Name"]: e["Value"] for e in container["Environment"]} == {
        "CODER_ACCESS_URL": f"https://coder.{domain}",
        "CODER_WILDCARD_ACCESS_URL": f"*.{domain}",
        "CODER_HTTP_ADDRESS": "0.0.0.0:7080",
        "CODER_SECURE_AUTH_COOKIE": "true",
        "CODER_OIDC_ISSUER_URL": env_config.oidc.issuer_url,
        "CODER_OIDC_CLIENT_ID": env_config.oidc.client_id,
        "CODER_OIDC_ALLOW_SIGNUPS": "true",
        "CODER_OIDC_EMAIL_DOMAIN": ",".join(env_config.oidc.allowed_email_domains),  # company.com in the shipped file
        "CODER_OIDC_EMAIL_FIELD": "upn",  # Entra ID users without a mail attribute
        "CODER_OIDC_SCOPES": "openid,profile,email,offline_access",  # refresh tokens: sessions renew
        "CODER_DERP_FORCE_WEBSOCKETS": "true",  # the relay's HTTP upgrade fails behind an ALB
        # No UDP reaches a workspace: no STUN, no peer-to-peer attempts, every connection relayed at once.
        "CODER_DERP_SERVER_STUN_ADDRESSES": "disable",
        "CODER_BLOCK_DIRECT": "true",
        "CODER_DISABLE_PATH_APPS": "true",  # apps on their own subdomains only (the wildcard URL above)
        "CODER_TELEMETRY_ENABLE": "false",  # the current name (CODER_TELEMETRY is a deprecated alias)
        "CODER_CACHE_DIRECTORY": "/home/coder/.cache/coder",
    }
    secrets = _secrets(container)
    assert set(secrets) == {"CODER_PG_CONNECTION_URL", "CODER_OIDC_CLIENT_SECRET"}
    assert _secret_is(secrets["CODER_PG_CONNECTION_URL"], "CoderDatabaseSecret", "url")
    assert _secret_is(secrets["CODER_OIDC_CLIENT_SECRET"], "CoderOidcSecret", "client_secret")


def test_coder_config_directory_on_the_platform_file_system_through_an_access_point(platform):
    container = _container(platform, "Coder")
    (mount,) = container["MountPoints"]
    assert mount["ContainerPath"] == "/home/coder/.config/coderv2" and mount["ReadOnly"] is False
    (volume,) = _task(platform, "Coder")["Volumes"]
    efs = volume["EFSVolumeConfiguration"]
    assert efs["TransitEncryption"] == "ENABLED"
    assert efs["AuthorizationConfig"] == {
        "AccessPointId": {"Ref": platform.logical_id("/Platform/Coder/ConfigAccessPoint/Resource")}, "IAM": "ENABLED"}
    access_point = platform.one("AWS::EFS::AccessPoint")
    assert "PlatformFileSystem" in json.dumps(access_point["FileSystemId"])  # out of the workspaces' reach
    assert access_point["PosixUser"] == {"Uid": "1000", "Gid": "1000"}
    assert access_point["RootDirectory"] == {
        "Path": "/coder", "CreationInfo": {"OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "750"}}
    mount_grant = [s for s in _statements(platform, "Coder/TaskRole") if "elasticfilesystem:ClientMount" in s["Action"]]
    (grant,) = mount_grant
    access_point_arn = grant["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
    assert access_point_arn["Fn::Join"][1][1] == {"Ref": platform.logical_id("/Platform/Coder/ConfigAccessPoint/Resource")}
    assert access_point_arn["Fn::Join"][1][0].endswith(":access-point/")


def test_litellm_container(platform, env_config):
    task = _task(platform, "LiteLLM")
    size = env_config.tasks.litellm
    assert (task["Cpu"], task["Memory"]) == (str(size.cpu), str(size.memory_mib))
    container = _container(platform, "LiteLLM")
    assert container["Image"] == env_config.images.litellm
    assert container["PortMappings"][0]["ContainerPort"] == 4000
    assert container["Command"] == ["--port", "4000"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    api_base = env_config.custom_llm_api_base.rstrip("/")
    bucket = f"cdk-hnb659fds-assets-{env_config.account}-{env_config.region}"
    assert environment.pop("LITELLM_CONFIG_BUCKET_OBJECT_KEY").endswith(".yaml")
    # The replicas' shared state: the Data stack's Redis primary endpoint (TLS and database: litellm/config.yaml).
    assert "RedisPrimaryEndPointAddress" in json.dumps(environment.pop("REDIS_HOST"))
    assert "RedisPrimaryEndPointPort" in json.dumps(environment.pop("REDIS_PORT"))
    assert environment == {
        "LITELLM_MODE": "PRODUCTION",  # no .env file read at start
        "KEEPALIVE_TIMEOUT": str(TARGET_KEEP_ALIVE_SECONDS),  # seconds (uvicorn), longer than the ALB keeps idle
        "NUM_WORKERS": str(max(1, size.cpu // 1024)),  # one worker process per vCPU
        "AWS_REGION_NAME": env_config.region,
        "LANGFUSE_OTEL_HOST": f"https://langfuse.{env_config.domain}",  # the langfuse_otel callback
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled price map, no download at start
        "LITELLM_ANTHROPIC_DISABLE_URL_SUFFIX": "true",
        "CUSTOM_LLM_API_BASE": api_base,
        "CUSTOM_LLM_CLAUDE_API_BASE": f"{api_base}/claude/messages",
        "LITELLM_CONFIG_BUCKET_NAME": bucket,
    }
    secrets = _secrets(container)
    assert set(secrets) == {
        "DATABASE_URL", "LITELLM_MASTER_KEY", "LITELLM_SALT_KEY", "ANTHROPIC_API_KEY", "CUSTOM_LLM_API_KEY",
        "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "REDIS_PASSWORD",
    }
    assert _secret_is(secrets["REDIS_PASSWORD"], "RedisAuthTokenSecret", None)
    assert _secret_is(secrets["DATABASE_URL"], "LitellmDatabaseSecret", "url")
    assert _secret_is(secrets["LITELLM_MASTER_KEY"], "LiteLLMMasterKeySecret", "master_key")
    assert _secret_is(secrets["LITELLM_SALT_KEY"], "LiteLLMMasterKeySecret", "salt_key")
    assert _secret_is(secrets["ANTHROPIC_API_KEY"], "AnthropicApiKeySecret", None)
    assert _secret_is(secrets["CUSTOM_LLM_API_KEY"], "CustomLlmApiKeySecret", None)
    assert _secret_is(secrets["LANGFUSE_PUBLIC_KEY"], "LangfuseApiKeysSecret", "public_key")
    assert _secret_is(secrets["LANGFUSE_SECRET_KEY"], "LangfuseApiKeysSecret", "secret_key")
    # Every os.environ/NAME of the shipped config.yaml reaches the container.
    assert load_litellm_config().environment_names <= (
        set(environment) | set(secrets) | {"LITELLM_CONFIG_BUCKET_OBJECT_KEY", "REDIS_HOST", "REDIS_PORT"})


def test_litellm_config_file_is_the_shipped_one(platform, assembly, stage):
    """The object key LiteLLM reads is the file asset of litellm/config.yaml, published to the Stage's account."""
    key = {e["Name"]: e["Value"] for e in _container(platform, "LiteLLM")["Environment"]}["LITELLM_CONFIG_BUCKET_OBJECT_KEY"]
    assets = json.loads(next(platform.path.parent.glob(f"{platform.path.name.split('.')[0]}.assets.json")).read_text())
    sources = {f"{asset_hash}.yaml": entry["source"]["path"] for asset_hash, entry in assets["files"].items()}
    shipped = (platform.path.parent / sources[key]).read_text()
    assert shipped == (ROOT / "litellm" / "config.yaml").read_text()


def test_key_provisioner_container(platform, env_config):
    task = _task(platform, "KeyProvisioner")
    assert (task["Cpu"], task["Memory"]) == ("256", "512")
    container = _container(platform, "KeyProvisioner")
    image = json.dumps(container["Image"])
    repository, tag = env_config.images.key_provisioner.split("/", 1)[1].split(":")
    assert f"{env_config.account}.dkr.ecr.{env_config.region}." in image and f"/{repository}:{tag}" in image
    assert container["PortMappings"][0]["ContainerPort"] == 8100
    assert {e["Name"]: e["Value"] for e in container["Environment"]} == {
        "LITELLM_URL": f"https://ai.{env_config.domain}",
        "CODER_URL": f"https://coder.{env_config.domain}",
        "PORT": "8100",
    }
    secrets = _secrets(container)
    assert set(secrets) == {"LITELLM_MASTER_KEY", "PROVISIONER_SECRET"}
    assert _secret_is(secrets["LITELLM_MASTER_KEY"], "LiteLLMMasterKeySecret", "master_key")
    assert _secret_is(secrets["PROVISIONER_SECRET"], "KeyProvisionerSecret", None)


def test_no_credential_in_any_container_environment_or_template(platform):
    for task in platform.props("AWS::ECS::TaskDefinition"):
        for container in task["ContainerDefinitions"]:
            for variable in container.get("Environment", []):
                assert not SECRET_LIKE_NAME.search(variable["Name"]) or variable["Name"] == "LITELLM_CONFIG_BUCKET_OBJECT_KEY"
    assert not SECRET_LIKE_VALUE.search(json.dumps(platform.body))


# --- services --------------------------------------------------------------------------------------------------


def test_every_service_rolls_back_allows_exec_and_registers_in_cloud_map(platform, assembly, stage, env_config):
    network = assembly.stack(stage, "Network")
    names = {}
    for lid, resource in platform.of_type("AWS::ServiceDiscovery::Service").items():
        props = resource["Properties"]
        assert props["DnsConfig"]["DnsRecords"] == [{"TTL": 10, "Type": "A"}]
        namespace = props["NamespaceId"]["Fn::GetStackOutput"]
        assert namespace["StackName"] == network.stack_name and "Namespace" in namespace["OutputName"]
        names[lid] = props["Name"]
    assert sorted(names.values()) == ["coder", "key-provisioner", "litellm"]
    for props in platform.props("AWS::ECS::Service"):
        deployment = props["DeploymentConfiguration"]
        assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert props["EnableExecuteCommand"] is env_config.ecs_exec
        assert props["HealthCheckGracePeriodSeconds"] >= 120
        assert props["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
        assert "EcsServicesSecurityGroup" in json.dumps(props["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"])
        # None of these is stateless with >= 2 tasks on Spot: Coder is stateful, LiteLLM must stay reliable.
        assert props["CapacityProviderStrategy"] == [{"CapacityProvider": "FARGATE", "Weight": 1}]
        (registry,) = props["ServiceRegistries"]
        assert registry["RegistryArn"]["Fn::GetAtt"][0] in names


def test_coder_never_runs_two_replicas_during_a_deploy(platform):
    service = platform.resources[platform.logical_id("/Platform/Coder/Service/Service/Service")]["Properties"]
    assert service["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0
    assert service["DeploymentConfiguration"]["MaximumPercent"] == 100


def test_log_groups_are_kept_a_year(platform, env_config):
    groups = platform.of_type("AWS::Logs::LogGroup")
    assert len(groups) == 3 + env_config.ecs_exec  # the services', and the ECS Exec sessions' where allowed
    for resource in groups.values():
        assert resource["Properties"]["RetentionInDays"] == 365
        assert resource["DeletionPolicy"] == "Retain"


# --- task roles ------------------------------------------------------------------------------------------------


def test_coder_task_role(platform, env_config):
    statements = _statements(platform, "Coder/TaskRole")
    sids = _by_sid(statements)
    workspaces = platform.logical_id("/Platform/WorkspaceCluster/Resource")
    env, region, account = env_config.name, env_config.region, env_config.account

    # Reach per platform resource: tests/test_tenants.py. Here, the shape of what the templates rely on.
    assert sids["ReadTaskDefinitions"]["Action"] == "ecs:DescribeTaskDefinition"
    assert "ecs:DeregisterTaskDefinition" not in json.dumps(statements)
    assert sids["NoPlatformTaskDefinitionFamilies"]["Effect"] == "Deny"
    assert sids["WorkspaceServices"]["Resource"] == f"arn:aws:ecs:{region}:{account}:service/coder-{env}-workspaces/*"
    assert sids["RunWorkspaceTasks"]["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": [workspaces, "Arn"]}}}
    assert sids["LegacyWorkspaceServices"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}
    assert sids["TagOnCreate"]["Condition"] == {
        "StringEquals": {"ecs:CreateAction": ["CreateService", "RegisterTaskDefinition", "RunTask"]}}

    pass_role = sids["PassWorkspaceRolesToEcsTasks"]
    assert pass_role["Action"] == "iam:PassRole"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    passed = sorted(r["Fn::GetAtt"][0] for r in pass_role["Resource"])
    assert passed == sorted(platform.logical_id(f"/Platform/Workspaces/{r}/Resource")
                            for r in ("WorkspaceTaskRole", "AemWorkspaceTaskRole", "WorkspaceExecutionRole"))
    assert "TaskDefinitionExecutionRole" not in json.dumps(pass_role)  # never a service's execution role

    assert sids["ReadBridgeParameters"]["Resource"] == f"arn:aws:ssm:{region}:{account}:parameter/coder-{env}/*"
    assert sids["WorkspaceLogGroups"]["Resource"] == f"arn:aws:logs:{region}:{account}:log-group:/coder-{env}/workspaces*"
    assert "FileSystem8A8E25C0" in json.dumps(sids["WorkspaceAccessPoints"]["Resource"])  # the workspaces' only
    assert sids["WorkspaceAccessPoints"]["Condition"] == {"StringEquals": {"aws:RequestTag/coder_provisioned": "true"}}
    assert sids["WorkspaceAccessPointTagsOnCreate"]["Condition"] == {
        "StringEquals": {"elasticfilesystem:CreateAction": "CreateAccessPoint"}}
    assert sids["WorkspaceAccessPointLifecycle"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}
    # Terraform state and locks: this environment's bucket and table only.
    state_bucket = f"arn:aws:s3:::coder-{env}-terraform-state-{account}-{region}"
    assert sids["TerraformStateObjects"]["Action"] == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert sids["TerraformStateObjects"]["Resource"] == f"{state_bucket}/*"
    assert sids["TerraformStateList"]["Resource"] == state_bucket
    assert sids["TerraformStateKey"]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert sids["TerraformLocks"]["Resource"] == f"arn:aws:dynamodb:{region}:{account}:table/coder-{env}-terraform-locks"
    assert sids["TerraformLocks"]["Action"] == [
        "dynamodb:DeleteItem", "dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem"]
    assert sids["TerraformLocksKey"]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"dynamodb.{region}.amazonaws.com"}}  # the data key, through DynamoDB only
    if env_config.features.enable_workspace_direct_access:
        assert sids["DirectAccessTargetGroups"]["Resource"] == f"arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/ws-*/*"
        assert sids["DirectAccessRuleLifecycle"]["Condition"] == {
            "StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any(a in ("*", "iam:*", "ecs:*", "s3:*") for a in actions)
        assert all(not a.startswith("iam:") or a == "iam:PassRole" for a in actions)


def test_litellm_task_role_invokes_only_the_configured_bedrock_models(platform, env_config):
    statements = _statements(platform, "LiteLLM/TaskRole")
    sids = _by_sid(statements)
    invoke = sids["InvokeConfiguredBedrockModels"]
    assert invoke["Action"] == ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
    models = load_litellm_config().bedrock_models
    assert models, "the shipped config routes to Bedrock"
    expected = set()
    for model in models:
        expected.add(f"arn:aws:bedrock:{env_config.region}:{env_config.account}:inference-profile/{model.model_id}")
        expected.add(f"arn:aws:bedrock:*::foundation-model/{model.foundation_model_id}")
    assert set(invoke["Resource"]) == expected
    read = sids["ReadConfigFile"]
    assert read["Action"] == "s3:GetObject"
    assert re.fullmatch(
        rf"arn:aws:s3:::cdk-hnb659fds-assets-{env_config.account}-{env_config.region}/[0-9a-f]{{64}}\.yaml", read["Resource"])
    secret_reads = [s for s in statements if "secretsmanager:GetSecretValue" in s["Action"]]
    (secret_read,) = secret_reads
    names = sorted(r["Fn::GetStackOutput"]["OutputName"] for r in secret_read["Resource"])
    assert [n.removeprefix("PublishOutputRef")[:16] for n in names] == ["AnthropicApiKeyS", "LiteLLMMasterKey"]


def _actions(statement) -> list[str]:
    return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]


def test_key_provisioner_task_role_reads_its_two_secrets(platform, env_config):
    statements = _statements(platform, "KeyProvisioner/TaskRole")
    (secret_read,) = [s for s in statements if "secretsmanager:GetSecretValue" in s["Action"]]
    names = sorted(r["Fn::GetStackOutput"]["OutputName"] for r in secret_read["Resource"])
    assert [n.removeprefix("PublishOutputRef")[:16] for n in names] == ["KeyProvisionerSe", "LiteLLMMasterKey"]
    (decrypt,) = [s for s in statements if s["Action"] == "kms:Decrypt"]
    assert decrypt["Condition"]["StringEquals"]["kms:ViaService"].startswith("secretsmanager.")
    others = [s for s in statements if s not in (secret_read, decrypt)]
    assert bool(others) is env_config.ecs_exec  # ECS Exec's grants where allowed, nothing else
    assert all(a.startswith(("ssmmessages:", "logs:", "kms:")) for s in others for a in _actions(s))


def test_langfuse_task_role_uses_only_its_two_buckets(platform, env_config):
    sids = _by_sid(_statements(platform, "LangfuseTaskRole"))
    assert set(sids) == {"LangfuseObjects", "LangfuseList", "LangfuseKey"}
    buckets = [f"arn:aws:s3:::coder-{env_config.name}-{name}-{env_config.account}-{env_config.region}"
               for name in ("langfuse-events", "langfuse-media")]
    assert sids["LangfuseObjects"]["Action"] == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert sids["LangfuseObjects"]["Resource"] == [f"{b}/*" for b in buckets]
    assert (sids["LangfuseList"]["Action"], sids["LangfuseList"]["Resource"]) == ("s3:ListBucket", buckets)
    key = sids["LangfuseKey"]
    assert key["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"] and "DataKey" in json.dumps(key["Resource"])
    assert key["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{env_config.region}.amazonaws.com"}}


def test_a_pinned_client_secret_version_reaches_the_admin_rule(variant):
    """After rotating the Azure AD client secret, pinning its VersionId in the config changes the rule, so the
    ALB picks the new secret up on the next deploy (the variant config pins it in staging only)."""
    for stage, pinned in (("Staging", True), ("Production", False)):
        platform = variant.assembly.stack(stage, "Platform")
        (rule,) = [p for p in platform.props("AWS::ElasticLoadBalancingV2::ListenerRule") if p["Priority"] == 200]
        suffix = rule["Actions"][0]["AuthenticateOidcConfig"]["ClientSecret"]["Fn::Join"][1][-1]
        assert suffix == f":SecretString:client_secret::{VARIANT_SECRET_VERSION if pinned else ''}}}}}"
