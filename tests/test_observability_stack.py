"""ObservabilityStack, for both Stages: the seed's assertions (3 task definitions, 3 services, target group 3000)
plus ClickHouse's single-server deployment and EFS access point, and Langfuse's complete configuration."""

from __future__ import annotations

import json
import re

import pytest

from constructs_lib.timeouts import TARGET_KEEP_ALIVE_SECONDS
from tests.assembly import ROOT
from tests.test_platform_services import SECRET_LIKE_NAME, SECRET_LIKE_VALUE

LANGFUSE_SECRETS = {
    # name -> (Data-layer secret construct id, JSON field): what web and worker both read
    "DATABASE_URL": ("LangfuseDatabaseSecret", "url"),
    "CLICKHOUSE_PASSWORD": ("ClickHousePasswordSecret", None),
    "REDIS_AUTH": ("RedisAuthTokenSecret", None),
    "SALT": ("LangfuseAuthSecret", "salt"),
    "ENCRYPTION_KEY": ("LangfuseAuthSecret", "encryption_key"),
}
# Web only (Langfuse 4.4.0's worker reads none of them): its session secret, the initial project's keys, the Azure AD
# app's client secret (the one Coder uses) and the first owner's password.
WEB_SECRETS = {
    "NEXTAUTH_SECRET": ("LangfuseAuthSecret", "nextauth_secret"),
    "LANGFUSE_INIT_PROJECT_PUBLIC_KEY": ("LangfuseApiKeysSecret", "public_key"),
    "LANGFUSE_INIT_PROJECT_SECRET_KEY": ("LangfuseApiKeysSecret", "secret_key"),
    "AUTH_AZURE_AD_CLIENT_SECRET": ("CoderOidcSecret", "client_secret"),
    "LANGFUSE_INIT_USER_PASSWORD": ("LangfuseOwnerSecret", None),
}


@pytest.fixture
def observability(assembly, stage):
    return assembly.stack(stage, "Observability")


def _task(template, path: str) -> dict:
    return template.resources[template.logical_id(f"/Observability/{path}/TaskDefinition/Resource")]["Properties"]


def _service(template, path: str) -> dict:
    return template.resources[template.logical_id(f"/Observability/{path}/Service/Service")]["Properties"]


def _container(template, path: str) -> dict:
    """The service's own container (ClickHouse's task also has the move container that runs before it)."""
    (container,) = [c for c in _task(template, path)["ContainerDefinitions"] if c.get("Essential", True)]
    return container


def _environment(container: dict) -> dict:
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


def _secret_sources(container: dict) -> dict[str, tuple[str, str | None]]:
    found = {}
    for secret in container.get("Secrets", []):
        value = secret["ValueFrom"]
        ref, field = (value["Fn::Join"][1][0], value["Fn::Join"][1][1].split(":")[1]) if "Fn::Join" in value else (value, None)
        output = ref["Fn::GetStackOutput"]
        assert output["StackName"].endswith("-Data")
        found[secret["Name"]] = (output["OutputName"].removeprefix("PublishOutputRef"), field)
    return found


# --- the seed's ObservabilityStack assertions ----------------------------------------------------------------


def test_task_definitions_and_services(observability, env_config):
    """ClickHouse, the worker, the first web task; web replicas where more than one web task is configured."""
    expected = 3 + (env_config.services.langfuse_web_desired_count > 1)
    assert len(observability.of_type("AWS::ECS::TaskDefinition")) == expected
    assert len(observability.of_type("AWS::ECS::Service")) == expected


def test_langfuse_target_group_on_3000(observability):
    group = observability.one("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert (group["Port"], group["Protocol"], group["TargetType"]) == (3000, "HTTP", "ip")
    assert group["HealthCheckPath"] == "/api/public/health"


def test_the_whole_app_has_four_target_groups(assembly, stage):
    counts = {layer: len(assembly.stack(stage, layer).of_type("AWS::ElasticLoadBalancingV2::TargetGroup"))
              for layer in ("Network", "Data", "Platform", "Observability")}
    assert counts == {"Network": 0, "Data": 0, "Platform": 3, "Observability": 1}


# --- ClickHouse ------------------------------------------------------------------------------------------------


def test_clickhouse_is_one_server_never_two(observability, env_config):
    service = _service(observability, "ClickHouse/Service")
    assert service["DesiredCount"] == 1
    assert service["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0
    assert service["DeploymentConfiguration"]["MaximumPercent"] == 100
    assert service["CapacityProviderStrategy"] == [{"CapacityProvider": "FARGATE", "Weight": 1}]
    assert "LoadBalancers" not in service or service["LoadBalancers"] == []
    assert "ClickHouseSecurityGroup" in json.dumps(service["NetworkConfiguration"])


def test_clickhouse_container(observability, env_config):
    task = _task(observability, "ClickHouse/Service")
    size = env_config.tasks.clickhouse
    assert (task["Cpu"], task["Memory"]) == (str(size.cpu), str(size.memory_mib))
    container = _container(observability, "ClickHouse/Service")
    assert container["Image"] == env_config.images.clickhouse
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [8123, 9000]
    assert _environment(container) == {
        "CLICKHOUSE_DB": "langfuse",
        "CLICKHOUSE_USER": "langfuse",
        "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "0",
        "CLICKHOUSE_DO_NOT_CHOWN": "1",
    }
    sources = _secret_sources(container)
    assert list(sources) == ["CLICKHOUSE_PASSWORD"]
    assert sources["CLICKHOUSE_PASSWORD"][0].startswith("ClickHousePasswordSecret")
    health = container["HealthCheck"]
    assert "http://localhost:8123/ping" in health["Command"][1]
    assert container["Ulimits"] == [{"HardLimit": 262144, "Name": "nofile", "SoftLimit": 262144}]
    # Logs go to CloudWatch, the only mount is the data directory.
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert [m["ContainerPath"] for m in container["MountPoints"]] == ["/var/lib/clickhouse"]


def test_clickhouse_data_on_the_platform_file_system_as_uid_101(observability, env_config):
    access_points = {lid: ap for lid, ap in observability.of_type("AWS::EFS::AccessPoint").items()}
    new = observability.logical_id("/Observability/ClickHouse/PlatformDataAccessPoint/Resource")
    old = observability.logical_id("/Observability/ClickHouse/DataAccessPoint/Resource")  # the same as before
    assert sorted(access_points) == sorted([new, old])  # "copy" in the shipped config
    for lid, on in ((new, "PlatformFileSystem"), (old, "PublishOutputRefFileSystem8A8E25C0")):
        access_point = access_points[lid]["Properties"]
        assert on in json.dumps(access_point["FileSystemId"])
        assert access_point["PosixUser"] == {"Uid": "101", "Gid": "101"}
        assert access_point["RootDirectory"] == {
            "Path": "/clickhouse", "CreationInfo": {"OwnerUid": "101", "OwnerGid": "101", "Permissions": "750"}}
    volumes = {v["Name"]: v["EFSVolumeConfiguration"] for v in _task(observability, "ClickHouse/Service")["Volumes"]}
    assert sorted(volumes) == ["clickhouse-efs-0", "clickhouse-move-0-source"]
    for volume in volumes.values():
        assert volume["TransitEncryption"] == "ENABLED" and volume["AuthorizationConfig"]["IAM"] == "ENABLED"
    assert volumes["clickhouse-efs-0"]["AuthorizationConfig"]["AccessPointId"] == {"Ref": new}
    assert volumes["clickhouse-move-0-source"]["AuthorizationConfig"]["AccessPointId"] == {"Ref": old}


def test_clickhouse_starts_only_after_its_data_is_moved(observability):
    """Earlier releases kept ClickHouse's data on the workspaces' file system: a container of the task copies it to
    the platform's (scripts/move-data.sh; tests/test_move_data.py runs it) and ClickHouse waits for it to succeed."""
    containers = {c["Name"]: c for c in _task(observability, "ClickHouse/Service")["ContainerDefinitions"]}
    move, server = containers["clickhouse-move-0"], containers["clickhouse"]
    assert server["DependsOn"] == [{"ContainerName": "clickhouse-move-0", "Condition": "SUCCESS"}]
    assert move["Essential"] is False and move["Image"] == server["Image"]  # nothing more to pull
    assert move["EntryPoint"] == ["sh", "-c"]
    script = (ROOT / "constructs_lib" / "scripts" / "move-data.sh").read_text()
    assert move["Command"] == [script]  # the file tests/test_move_data.py runs, byte for byte
    assert _environment(move) == {"MOVE_FROM": "/moving/from", "MOVE_TO": "/moving/to", "MOVE_REMOVE_SOURCE": "false"}
    mounts = {m["ContainerPath"]: (m["SourceVolume"], m["ReadOnly"]) for m in move["MountPoints"]}
    assert mounts == {"/moving/from": ("clickhouse-move-0-source", True), "/moving/to": ("clickhouse-efs-0", False)}
    assert move["LogConfiguration"]["Options"]["awslogs-stream-prefix"] == "clickhouse-move-0"


def test_old_clickhouse_data_removed_or_not_there(variant, three_environments):
    """`remove` (the config variant's staging) empties the old copy; `none` (the example's new dev environment) reads
    none: no old access point, no move container."""
    staging = variant.assembly.stack("Staging", "Observability")
    move = {c["Name"]: c for c in _task(staging, "ClickHouse/Service")["ContainerDefinitions"]}["clickhouse-move-0"]
    assert _environment(move)["MOVE_REMOVE_SOURCE"] == "true"
    assert {m["ContainerPath"]: m["ReadOnly"] for m in move["MountPoints"]} == {"/moving/from": False, "/moving/to": False}
    grants = [s["Action"] for s in _policy_of(staging, "ClickHouse/TaskRole")["PolicyDocument"]["Statement"]
              if "elasticfilesystem:ClientMount" in json.dumps(s)]
    assert grants == [["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]] * 2

    dev = three_environments.stack("Dev", "Observability")
    containers = _task(dev, "ClickHouse/Service")["ContainerDefinitions"]
    assert [c["Name"] for c in containers] == ["clickhouse"] and "DependsOn" not in containers[0]
    (access_point,) = dev.of_type("AWS::EFS::AccessPoint").values()
    assert "PlatformFileSystem" in json.dumps(access_point["Properties"]["FileSystemId"])


def test_clickhouse_cloud_map_name(observability, env_config):
    names = sorted(p["Name"] for p in observability.props("AWS::ServiceDiscovery::Service"))
    replicas = ["langfuse-web-replicas"] if env_config.services.langfuse_web_desired_count > 1 else []
    assert names == sorted(["clickhouse", "langfuse-web", "langfuse-worker", *replicas])


# --- Langfuse --------------------------------------------------------------------------------------------------


def test_langfuse_rule_priority_300(observability, env_config):
    rule = observability.one("AWS::ElasticLoadBalancingV2::ListenerRule")
    assert rule["Priority"] == 300
    assert rule["Conditions"] == [{"Field": "host-header", "HostHeaderConfig": {"Values": [f"langfuse.{env_config.domain}"]}}]
    assert [a["Type"] for a in rule["Actions"]] == ["forward"]  # Langfuse's public API: no ALB sign-in
    assert rule["Actions"][0]["TargetGroupArn"] == {
        "Ref": observability.logical_id("/Observability/Langfuse/Web/TargetGroup/Resource")}
    assert rule["ListenerArn"]["Fn::GetStackOutput"]["StackName"].endswith("-Platform")


MIGRATIONS_OFF = {"LANGFUSE_AUTO_POSTGRES_MIGRATION_DISABLED": "true", "LANGFUSE_AUTO_CLICKHOUSE_MIGRATION_DISABLED": "true"}


@pytest.mark.parametrize(("path", "image_key", "port", "size", "migrates"), [
    ("Langfuse/Web", "langfuse", 3000, "langfuse_web", True),
    ("Langfuse/WebReplicas", "langfuse", 3000, "langfuse_web", False),
    ("Langfuse/Worker", "langfuse_worker", 3030, "langfuse_worker", False),
])
def test_langfuse_containers(observability, env_config, path, image_key, port, size, migrates):
    if path.endswith("Replicas") and env_config.services.langfuse_web_desired_count == 1:
        assert not [r for r in observability.resources.values() if f"/{path}/" in r["Metadata"]["aws:cdk:path"]]
        return
    task = _task(observability, path)
    size = getattr(env_config.tasks, size)
    assert (task["Cpu"], task["Memory"]) == (str(size.cpu), str(size.memory_mib))
    assert "LangfuseTaskRole" in json.dumps(task["TaskRoleArn"])
    container = _container(observability, path)
    assert container["Image"] == getattr(env_config.images, image_key)
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [port]
    environment = _environment(container)
    namespace = f"coder-{env_config.name}.local"
    expected = {  # what web and worker both read
        "NODE_ENV": "production",
        "HOSTNAME": "0.0.0.0",
        "PORT": str(port),
        "NEXTAUTH_URL": f"https://langfuse.{env_config.domain}",
        "CLICKHOUSE_URL": f"http://clickhouse.{namespace}:8123",
        "CLICKHOUSE_USER": "langfuse",
        "CLICKHOUSE_DB": "langfuse",
        "CLICKHOUSE_CLUSTER_ENABLED": "false",
        "REDIS_TLS_ENABLED": "true",
        "LANGFUSE_S3_EVENT_UPLOAD_REGION": env_config.region,
        "LANGFUSE_S3_EVENT_UPLOAD_PREFIX": "events/",
        "LANGFUSE_S3_MEDIA_UPLOAD_REGION": env_config.region,
        "LANGFUSE_S3_MEDIA_UPLOAD_PREFIX": "media/",
    }
    web = path.startswith("Langfuse/Web")
    if web:  # what only web reads; the worker gets none of it (Langfuse 4.4.0: worker/src/env.ts)
        expected |= {
            "KEEP_ALIVE_TIMEOUT": str(TARGET_KEEP_ALIVE_SECONDS * 1000),  # milliseconds (Next.js standalone server)
            "TELEMETRY_ENABLED": "false",
            "CLICKHOUSE_MIGRATION_URL": f"clickhouse://clickhouse.{namespace}:9000",
            "LANGFUSE_INIT_ORG_ID": "coder",
            "LANGFUSE_INIT_ORG_NAME": "coder",
            "LANGFUSE_INIT_PROJECT_ID": "coder-gateway",
            "LANGFUSE_INIT_PROJECT_NAME": "LiteLLM gateway",
            # sign-in: Azure AD of the company's tenant only, no password, no organisation for newcomers
            "AUTH_AZURE_AD_CLIENT_ID": env_config.oidc.client_id,
            "AUTH_AZURE_AD_TENANT_ID": env_config.oidc.issuer_url.split("/")[3],
            "AUTH_AZURE_AD_ALLOW_ACCOUNT_LINKING": "true",
            "AUTH_DISABLE_USERNAME_PASSWORD": "true",
            "LANGFUSE_INIT_USER_EMAIL": env_config.langfuse.owner_email,
            "LANGFUSE_INIT_USER_NAME": "Langfuse owner",
            **({} if migrates else MIGRATIONS_OFF),  # exactly one container migrates: the first web task
        }
    references = {name: environment.pop(name) for name in (
        "REDIS_HOST", "REDIS_PORT", "LANGFUSE_S3_EVENT_UPLOAD_BUCKET", "LANGFUSE_S3_MEDIA_UPLOAD_BUCKET")}
    assert environment == expected
    assert "RedisPrimaryEndPointAddress" in json.dumps(references["REDIS_HOST"])
    assert "RedisPrimaryEndPointPort" in json.dumps(references["REDIS_PORT"])
    assert "LangfuseEventsBucket" in json.dumps(references["LANGFUSE_S3_EVENT_UPLOAD_BUCKET"])
    assert "LangfuseMediaBucket" in json.dumps(references["LANGFUSE_S3_MEDIA_UPLOAD_BUCKET"])
    assert not any(name.startswith("LANGFUSE_DEFAULT_") for name in environment)  # newcomers see no one's traces
    sources = _secret_sources(container)
    wanted = {**LANGFUSE_SECRETS, **(WEB_SECRETS if web else {})}
    assert set(sources) == set(wanted)
    for name, (construct_id, field) in wanted.items():
        assert sources[name][0].startswith(construct_id.removesuffix("Secret")), (name, sources[name])
        assert sources[name][1] == field, name


def test_litellm_traces_land_in_the_initialised_project(assembly, stage, observability):
    """LiteLLM's callback keys are the keys Langfuse initialises its project with: the same secret and fields."""
    platform = assembly.stack(stage, "Platform")
    task = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/TaskDefinition/Resource")]["Properties"]
    litellm = _secret_sources(task["ContainerDefinitions"][0])
    langfuse = _secret_sources(_container(observability, "Langfuse/Web"))
    assert litellm["LANGFUSE_PUBLIC_KEY"] == langfuse["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"]
    assert litellm["LANGFUSE_SECRET_KEY"] == langfuse["LANGFUSE_INIT_PROJECT_SECRET_KEY"]


def test_one_web_task_migrates_alone_and_the_others_follow_it(observability, env_config):
    web = _service(observability, "Langfuse/Web")
    assert web["DesiredCount"] == 1
    assert [s["CapacityProvider"] for s in web["CapacityProviderStrategy"]] == ["FARGATE"]  # never interrupted by Spot
    assert web["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0  # stop, then start: never two migrating
    assert web["DeploymentConfiguration"]["MaximumPercent"] == 100
    if env_config.services.langfuse_web_desired_count == 1:
        return
    replicas_id = observability.logical_id("/Observability/Langfuse/WebReplicas/Service/Service")
    replicas = observability.resources[replicas_id]
    assert replicas["Properties"]["DesiredCount"] == env_config.services.langfuse_web_desired_count - 1
    target_group = [(lb["TargetGroupArn"], lb["ContainerPort"]) for lb in web["LoadBalancers"]]
    assert [(lb["TargetGroupArn"], lb["ContainerPort"]) for lb in replicas["Properties"]["LoadBalancers"]] == target_group
    assert replicas["Properties"]["HealthCheckGracePeriodSeconds"] == 300
    assert observability.logical_id("/Observability/Langfuse/Web/Service/Service") in replicas["DependsOn"]


def test_langfuse_health_checks_and_capacity(observability, env_config):
    worker = _service(observability, "Langfuse/Worker")
    assert "HealthCheckGracePeriodSeconds" not in worker and worker.get("LoadBalancers", []) == []
    assert "http://127.0.0.1:3030/api/health" in _container(observability, "Langfuse/Worker")["HealthCheck"]["Command"][1]
    counts = {"worker": env_config.services.langfuse_worker_desired_count}
    for name, service in (("worker", worker),):
        assert service["DesiredCount"] == counts[name]
        providers = [s["CapacityProvider"] for s in service["CapacityProviderStrategy"]]
        # Spot only with two or more tasks, and one regular task kept as the base.
        assert providers == (["FARGATE", "FARGATE_SPOT"] if counts[name] >= 2 else ["FARGATE"])
        if counts[name] >= 2:
            assert service["CapacityProviderStrategy"][0]["Base"] == 1
        assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert service["EnableExecuteCommand"] is env_config.ecs_exec
        assert "LangfuseSecurityGroup" in json.dumps(service["NetworkConfiguration"])


def test_no_credential_in_any_container_environment_or_template(observability):
    for task in observability.props("AWS::ECS::TaskDefinition"):
        for container in task["ContainerDefinitions"]:
            for variable in container.get("Environment", []):
                switch = variable["Name"] == "AUTH_DISABLE_USERNAME_PASSWORD" and variable["Value"] == "true"
                assert switch or not SECRET_LIKE_NAME.search(variable["Name"]), variable["Name"]
    assert not SECRET_LIKE_VALUE.search(json.dumps(observability.body))
    containers = json.dumps([t["ContainerDefinitions"] for t in observability.props("AWS::ECS::TaskDefinition")])
    assert not re.search(r"\b[0-9a-f]{64}\b", containers)  # no ENCRYPTION_KEY-shaped value


def _policy_of(template, role_path: str) -> dict:
    role = template.logical_id(f"/Observability/{role_path}/Resource")
    (policy,) = [p for p in template.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role}]]
    return policy


def test_this_stack_writes_no_iam_of_another_stack(observability, assembly, stage):
    """The execution and Langfuse roles are used as they are: every policy here belongs to a role of this stack."""
    own_roles = set(observability.of_type("AWS::IAM::Role"))
    for policy in observability.props("AWS::IAM::Policy"):
        assert [r["Ref"] for r in policy["Roles"]] and all(r["Ref"] in own_roles for r in policy["Roles"])
    platform = assembly.stack(stage, "Platform")
    assert "Observability" not in json.dumps(platform.body)


def test_langfuse_role_can_use_ecs_exec_where_allowed(assembly, stage, env_config):
    platform = assembly.stack(stage, "Platform")
    role = platform.resources[platform.logical_id("/Platform/LangfuseTaskRole/Resource")]["Properties"]
    expected = [{"Ref": platform.logical_id("/Platform/EcsExec/EcsExecPolicy/Resource")}] if env_config.ecs_exec else None
    assert role.get("ManagedPolicyArns") == expected


def test_clickhouse_task_role_mounts_only_its_access_points(observability, env_config):
    """Read and write through its data directory's access point; read only through the old one (the move copies)."""
    policy = _policy_of(observability, "ClickHouse/TaskRole")
    mount, old_mount, *exec_grants = policy["PolicyDocument"]["Statement"]
    assert bool(exec_grants) is env_config.ecs_exec  # ECS Exec's grants where allowed, nothing else
    for grant, actions, access_point in (
        (mount, ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"], "PlatformDataAccessPoint"),
        (old_mount, "elasticfilesystem:ClientMount", "DataAccessPoint"),
    ):
        assert grant["Action"] == actions
        condition = grant["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
        assert condition["Fn::Join"][1][1] == {
            "Ref": observability.logical_id(f"/Observability/ClickHouse/{access_point}/Resource")}
    for grant in exec_grants:
        actions = grant["Action"] if isinstance(grant["Action"], list) else [grant["Action"]]
        assert all(a.startswith(("ssmmessages:", "logs:", "kms:")) for a in actions)


def test_langfuse_web_starts_only_once_clickhouse_runs(observability):
    """Web migrates ClickHouse at start and exits when it cannot: CloudFormation creates (and updates) it after
    ClickHouse's service is stable, so a first deploy does not crash-loop it into the circuit breaker."""
    web = observability.resources[observability.logical_id("/Observability/Langfuse/Web/Service/Service")]
    assert observability.logical_id("/Observability/ClickHouse/Service/Service/Service") in web["DependsOn"]
