"""Who may do what, for the platform's least trusted principals: Coder (it runs templates written by others) and the
workspaces (developers run arbitrary code there, with the workspace task role's credentials). Each test asks IAM's
question with the ARNs of the real platform resources of both Stages (tests/iam_policy.py), and fails on a grant
that reaches a platform service, task, task definition or the platform's data."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.assembly import Assembly, Template
from tests.iam_policy import Request, Resolver, allowed, decision, resource_policy_statements, role_statements

ECS_TASKS = "ecs-tasks.amazonaws.com"


@dataclass(frozen=True)
class PlatformService:
    layer: str
    logical_id: str
    family: str
    roles: tuple[str, ...]  # task and execution role ARNs, as Coder's template resolves them


def _platform_services(assembly: Assembly, stage: str, resolve: Resolver) -> list[PlatformService]:
    """Every ECS service the Stage deploys (they all run in the platform's cluster), with its task definition's
    family and roles."""
    found = []
    for layer in ("Platform", "Observability"):
        template = assembly.stack(stage, layer)
        own = resolve.of(template)
        for logical_id, service in template.of_type("AWS::ECS::Service").items():
            task = template.resources[service["Properties"]["TaskDefinition"]["Ref"]]["Properties"]
            roles = tuple(own(task[key]) for key in ("TaskRoleArn", "ExecutionRoleArn"))
            found.append(PlatformService(layer, logical_id, task["Family"], roles))
    return found


@pytest.fixture
def coder(assembly, stage, env_config):
    platform = assembly.stack(stage, "Platform")
    resolve = Resolver(platform, env_config.account, env_config.region, stacks=assembly.templates)
    role = platform.logical_id("/Platform/Coder/TaskRole/Resource")
    return platform, resolve, role_statements(platform, role, resolve)


def _clusters(platform: Template, env_config) -> tuple[str, str]:
    """The platform's cluster and the workspaces' (two clusters, nothing else)."""
    names = {r["Properties"]["ClusterName"] for r in platform.of_type("AWS::ECS::Cluster").values()}
    assert names == {env_config.qualifier, env_config.workspace_cluster_name}
    return env_config.qualifier, env_config.workspace_cluster_name


def test_every_platform_service_runs_in_the_platform_cluster(assembly, stage, env_config):
    """The premise of the tests below: no platform service shares the workspaces' cluster."""
    platform = assembly.stack(stage, "Platform")
    platform_cluster = platform.logical_id("/Platform/Cluster/Resource")
    for layer in ("Platform", "Observability"):
        for logical_id, service in assembly.stack(stage, layer).of_type("AWS::ECS::Service").items():
            cluster = service["Properties"]["Cluster"]
            if layer == "Platform":
                assert cluster == {"Ref": platform_cluster}, logical_id
            else:
                assert platform_cluster in cluster["Fn::GetStackOutput"]["OutputName"], logical_id
            tags = {t["Key"] for t in service["Properties"].get("Tags", [])}
            assert "coder_provisioned" not in tags, f"{logical_id}: a platform service must never carry Coder's tag"


def test_coder_cannot_touch_a_platform_service_task_or_task_definition(coder, assembly, stage, env_config):
    platform, resolve, statements = coder
    platform_cluster = env_config.qualifier
    cluster_arn = resolve.cluster_arn(platform_cluster)
    services = _platform_services(assembly, stage, resolve)
    assert len(services) >= 6

    wrong = []
    for service in services:
        arn = resolve.arn("ecs", f"service/{platform_cluster}/{service.logical_id}")
        revision = resolve.arn("ecs", f"task-definition/{service.family}:1")
        in_platform_cluster = {"ecs:cluster": cluster_arn}
        requests = [
            Request("ecs:UpdateService", arn, {**in_platform_cluster, "ecs:task-definition": revision}),
            Request("ecs:DeleteService", arn, in_platform_cluster),
            Request("ecs:CreateService", arn, {**in_platform_cluster, "ecs:task-definition": revision}),
            Request("ecs:DescribeServices", arn, in_platform_cluster),
            Request("ecs:TagResource", arn, {"aws:RequestTag/coder_provisioned": "true"}),  # not while creating
            Request("ecs:RunTask", revision, in_platform_cluster),
            Request("ecs:StopTask", resolve.arn("ecs", f"task/{platform_cluster}/0123456789abcdef"), in_platform_cluster),
            Request("ecs:RegisterTaskDefinition", resolve.arn("ecs", f"task-definition/{service.family}:2")),
            Request("ecs:DeregisterTaskDefinition", "*"),
            Request("ecs:ExecuteCommand", resolve.arn("ecs", f"task/{platform_cluster}/0123456789abcdef"),
                    in_platform_cluster),
        ]
        # Running a platform task definition where Coder may run tasks needs its roles passed: never allowed.
        requests += [Request("iam:PassRole", role, {"iam:PassedToService": ECS_TASKS}) for role in service.roles]
        wrong += [f"{service.layer}/{service.logical_id}: {r.action} {r.resource}" for r in requests if allowed(statements, r)]
    assert not wrong, "Coder may act on platform services:\n" + "\n".join(wrong)


def test_coder_manages_workspaces_in_their_cluster(coder, env_config):
    platform, resolve, statements = coder
    platform_cluster, workspaces = _clusters(platform, env_config)
    in_workspaces = {"ecs:cluster": resolve.cluster_arn(workspaces)}
    service = resolve.arn("ecs", f"service/{workspaces}/coder-alice-dev")
    revision = resolve.arn("ecs", "task-definition/coder:7")
    passable = [resolve.role_arn(platform.logical_id(f"/Platform/Workspaces/{name}/Resource"))
                for name in ("WorkspaceTaskRole", "AemWorkspaceTaskRole", "WorkspaceExecutionRole")]
    requests = [
        Request("ecs:RegisterTaskDefinition", revision),
        Request("ecs:CreateService", service, {**in_workspaces, "ecs:task-definition": revision}),
        Request("ecs:UpdateService", service, {**in_workspaces, "ecs:task-definition": revision}),
        Request("ecs:DescribeServices", service, in_workspaces),
        Request("ecs:DeleteService", service, in_workspaces),
        Request("ecs:RunTask", revision, in_workspaces),
        Request("ecs:StopTask", resolve.arn("ecs", f"task/{workspaces}/0123456789abcdef"), in_workspaces),
        Request("ecs:TagResource", service, {"ecs:CreateAction": "CreateService"}),
        *(Request("iam:PassRole", role, {"iam:PassedToService": ECS_TASKS}) for role in passable),
        # A workspace an earlier release placed in the platform's cluster, tagged as Coder's: stop and remove it.
        *(Request(action, resolve.arn("ecs", f"service/{platform_cluster}/coder-bob-dev"),
                  {"ecs:cluster": resolve.cluster_arn(platform_cluster), "aws:ResourceTag/coder_provisioned": "true"})
          for action in ("ecs:UpdateService", "ecs:DeleteService")),
    ]
    refused = [f"{r.action} {r.resource}" for r in requests if not allowed(statements, r)]
    assert not refused, "Coder cannot manage its workspaces:\n" + "\n".join(refused)
    # A role passed to anything but ECS tasks, and a role that is not a workspace's, stay out of reach.
    assert not allowed(statements, Request("iam:PassRole", passable[0], {"iam:PassedToService": "lambda.amazonaws.com"}))
    assert not allowed(statements, Request("iam:PassRole", resolve.role_arn(
        platform.logical_id("/Platform/Coder/TaskRole/Resource")), {"iam:PassedToService": ECS_TASKS}))


# --- the file systems ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSystems:
    """Both file systems' ARNs and policies, and the platform's access points, as every layer's policies name them."""

    workspaces: str
    platform: str
    policies: dict[str, dict]  # ARN -> file system policy (resolved)
    coder_access_point: str
    clickhouse_access_point: str
    old_clickhouse_access_point: str | None


@pytest.fixture
def file_systems(assembly, stage, env_config) -> FileSystems:
    data = assembly.stack(stage, "Data")
    resolve = Resolver(data, env_config.account, env_config.region, stacks=assembly.templates)
    arns = {lid: resolve({"Fn::GetAtt": [lid, "Arn"]}) for lid in data.of_type("AWS::EFS::FileSystem")}
    policies = {arns[lid]: resolve(fs["Properties"]["FileSystemPolicy"]) for lid, fs in data.of_type("AWS::EFS::FileSystem").items()}
    workspaces, platform = (arns[data.logical_id(f"/Data/FileSystems/{name}/Resource")]
                            for name in ("FileSystem", "PlatformFileSystem"))

    def access_point(layer: str, path: str) -> str | None:
        template = assembly.stack(stage, layer)
        found = [lid for lid in template.of_type("AWS::EFS::AccessPoint")
                 if template.resources[lid]["Metadata"]["aws:cdk:path"].endswith(f"{path}/Resource")]
        return resolve.of(template)({"Fn::GetAtt": [found[0], "Arn"]}) if found else None

    return FileSystems(workspaces, platform, policies, access_point("Platform", "/Coder/ConfigAccessPoint"),
                       access_point("Observability", "/ClickHouse/PlatformDataAccessPoint"),
                       access_point("Observability", "/ClickHouse/DataAccessPoint"))


def _mount(file_system: str, access_point: str | None, action: str = "elasticfilesystem:ClientMount", *,
           tls: bool = True) -> Request:
    context = {"aws:SecureTransport": str(tls).lower(), "elasticfilesystem:AccessedViaMountTarget": "true"}
    if access_point:
        context["elasticfilesystem:AccessPointArn"] = access_point
    return Request(action, file_system, context)


def _may(identity: list[dict], role_arn: str, file_systems: FileSystems, request: Request) -> bool:
    """IAM's answer in the file system's own account: the role's policies and the file system policy together."""
    policy = file_systems.policies.get(request.resource)
    on_resource = resource_policy_statements(policy, role_arn) if policy else []
    return allowed(identity + on_resource, request)


def test_file_system_policies_grant_nothing_and_refuse_plain_nfs_root_and_mounts_without_an_access_point(file_systems):
    for arn, policy in file_systems.policies.items():
        assert all(s["Effect"] == "Deny" for s in policy["Statement"]), f"{arn}: a file system policy that allows"
        for action in ("elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"):
            assert decision(policy["Statement"], _mount(arn, "arn:aws:elasticfilesystem:r:1:access-point/fsap-1",
                                                        action, tls=False)) == "deny"
            assert decision(policy["Statement"], _mount(arn, None, action)) == "deny"
        assert decision(policy["Statement"], _mount(arn, "arn:ap", "elasticfilesystem:ClientRootAccess")) == "deny"


@pytest.mark.parametrize("role", ["WorkspaceTaskRole", "AemWorkspaceTaskRole"])
def test_a_workspace_mounts_its_home_through_an_access_point_and_nothing_of_the_platform(
    role, assembly, stage, env_config, file_systems
):
    platform = assembly.stack(stage, "Platform")
    resolve = Resolver(platform, env_config.account, env_config.region, stacks=assembly.templates)
    role_id = platform.logical_id(f"/Platform/Workspaces/{role}/Resource")
    identity, arn = role_statements(platform, role_id, resolve), resolve.role_arn(role_id)
    home = resolve.arn("elasticfilesystem", "access-point/fsap-0123456789abcdef0")  # one Coder created
    fs = file_systems

    def may(request: Request) -> bool:
        return _may(identity, arn, fs, request)

    assert may(_mount(fs.workspaces, home)) and may(_mount(fs.workspaces, home, "elasticfilesystem:ClientWrite"))
    refused = {
        "the workspaces' file system without an access point": _mount(fs.workspaces, None),
        "root on the workspaces' file system": _mount(fs.workspaces, home, "elasticfilesystem:ClientRootAccess"),
        "its home without TLS": _mount(fs.workspaces, home, tls=False),
        "ClickHouse's data": _mount(fs.platform, fs.clickhouse_access_point),
        "Coder's configuration": _mount(fs.platform, fs.coder_access_point),
        "the platform's file system through any access point": _mount(fs.platform, home),
        "an access point of its own": Request("elasticfilesystem:CreateAccessPoint", fs.workspaces,
                                              {"aws:RequestTag/coder_provisioned": "true"}),
    }
    reached = [what for what, request in refused.items() if may(request)]
    assert not reached, f"a workspace ({role}) reaches: {', '.join(reached)}"


def test_coder_makes_access_points_for_workspaces_only(coder, file_systems):
    platform, resolve, statements = coder
    arn = resolve.role_arn(platform.logical_id("/Platform/Coder/TaskRole/Resource"))
    fs = file_systems

    def may(request: Request) -> bool:
        return _may(statements, arn, fs, request)

    tagged = {"aws:RequestTag/coder_provisioned": "true"}
    assert may(Request("elasticfilesystem:CreateAccessPoint", fs.workspaces, tagged))
    assert may(_mount(fs.platform, fs.coder_access_point, "elasticfilesystem:ClientWrite"))  # its configuration
    platform_access_points = [ap for ap in (fs.clickhouse_access_point, fs.old_clickhouse_access_point) if ap]
    refused = {
        "an access point on the platform's file system": Request("elasticfilesystem:CreateAccessPoint", fs.platform,
                                                                 tagged),
        "an untagged access point (it could not delete it)": Request("elasticfilesystem:CreateAccessPoint",
                                                                     fs.workspaces),
        "ClickHouse's data": _mount(fs.platform, fs.clickhouse_access_point),
        **{f"tag {ap}": Request("elasticfilesystem:TagResource", ap, {"aws:RequestTag/coder_provisioned": "true"})
           for ap in platform_access_points},
        **{f"delete {ap}": Request("elasticfilesystem:DeleteAccessPoint", ap) for ap in platform_access_points},
    }
    reached = [what for what, request in refused.items() if may(request)]
    assert not reached, f"Coder reaches: {', '.join(reached)}"


def test_clickhouse_data_lives_on_the_platform_file_system_which_workspaces_cannot_reach(assembly, stage, env_config,
                                                                                         file_systems):
    network = assembly.stack(stage, "Network")
    data = assembly.stack(stage, "Data")
    assert file_systems.clickhouse_access_point and file_systems.coder_access_point
    observability = assembly.stack(stage, "Observability")
    ap = observability.resources[observability.logical_id("/ClickHouse/PlatformDataAccessPoint/Resource")]["Properties"]
    assert "PlatformFileSystem" in str(ap["FileSystemId"]) and ap["RootDirectory"]["Path"] == "/clickhouse"
    # Network: the platform file system's mount targets admit Coder's and ClickHouse's groups, never the workspaces'.
    platform_group = data.resources[data.logical_id("/Data/FileSystems/PlatformFileSystem/EfsMountTarget-PrivateAppSubnet1")][
        "Properties"]["SecurityGroups"]
    group_output = platform_group[0]["Fn::GetStackOutput"]["OutputName"]
    assert "PlatformEfsSecurityGroup" in group_output
    sources = {str(rule["Properties"]["SourceSecurityGroupId"]) for rule in network.of_type(
        "AWS::EC2::SecurityGroupIngress").values() if "PlatformEfsSecurityGroup" in str(rule["Properties"]["GroupId"])}
    assert len(sources) == 2 and all("ClickHouse" in s or "EcsServices" in s for s in sources), sources


# --- who may become a task role -----------------------------------------------------------------------------------


def test_task_roles_trust_only_this_accounts_ecs_tasks(assembly, stage, env_config):
    """A task role's credentials are what a task's code may do (a workspace's: whatever its developer runs); ECS's
    confused-deputy conditions keep another account's tasks from assuming them. Execution roles keep ECS's documented
    trust (ECS documents the conditions for task roles only)."""
    account, region = env_config.account, env_config.region
    task_roles, execution_roles = set(), set()
    for layer in ("Platform", "Observability"):
        template = assembly.stack(stage, layer)
        for task in template.props("AWS::ECS::TaskDefinition"):
            execution_roles.add((layer, json.dumps(task["ExecutionRoleArn"])))
        for logical_id, role in template.of_type("AWS::IAM::Role").items():
            (statement, *more) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
            if statement["Principal"] != {"Service": ECS_TASKS}:
                continue
            assert not more, logical_id
            arn = json.dumps({"Fn::GetAtt": [logical_id, "Arn"]})
            workspace_execution = logical_id.startswith("WorkspaceExecutionRole")
            if (layer, arn) in execution_roles or workspace_execution:
                assert "Condition" not in statement, logical_id
                continue
            task_roles.add(logical_id)
            assert statement["Condition"] == {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": f"arn:aws:ecs:{region}:{account}:*"},
            }, logical_id
    assert {r.rstrip("0123456789ABCDEF") for r in task_roles} >= {
        "WorkspaceTaskRole", "AemWorkspaceTaskRole", "CoderTaskRole", "LiteLLMTaskRole", "KeyProvisionerTaskRole",
        "LangfuseTaskRole", "ClickHouseTaskRole"}


def test_the_workspaces_execution_role_pulls_no_platform_image_and_writes_no_platform_log(assembly, stage, env_config):
    """Coder's templates choose a workspace's images and log group: never the platform's private images (the Key
    Provisioner's code) nor a platform service's logs (forged entries beside the real ones)."""
    platform = assembly.stack(stage, "Platform")
    resolve = Resolver(platform, env_config.account, env_config.region, stacks=assembly.templates)
    role = platform.logical_id("/Platform/Workspaces/WorkspaceExecutionRole/Resource")
    statements = role_statements(platform, role, resolve)
    assert not platform.resources[role]["Properties"].get("ManagedPolicyArns")  # not AWS's policy on every group
    group = f"/coder-{env_config.name}/workspaces/alice-dev"
    logs = resolve.arn("logs", f"log-group:{group}:log-stream:dev/abc")
    assert allowed(statements, Request("logs:PutLogEvents", logs))
    assert allowed(statements, Request("ecr:BatchGetImage", f"arn:aws:ecr:{env_config.region}:444444444444:repository/dev-base"))
    platform_logs = next(iter(assembly.stack(stage, "Observability").of_type("AWS::Logs::LogGroup")))
    for refused in (
        Request("logs:PutLogEvents", resolve.arn("logs", f"log-group:{platform_logs}:log-stream:langfuse-web/x")),
        Request("logs:PutLogEvents", resolve.arn("logs", f"log-group:/coder-{env_config.name}/ecs-exec:log-stream:x")),
        Request("ecr:BatchGetImage", f"arn:aws:ecr:{env_config.region}:{env_config.account}:repository/key-provisioner"),
        Request("secretsmanager:GetSecretValue", resolve.arn("secretsmanager", "secret:prod/litellm/master-key-AbCdEf")),
    ):
        assert not allowed(statements, refused), refused
