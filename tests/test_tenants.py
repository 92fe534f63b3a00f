"""Who may do what, for the platform's least trusted principals: Coder (it runs templates written by others) and the
workspaces (developers run arbitrary code there, with the workspace task role's credentials). Each test asks IAM's
question with the ARNs of the real platform resources of both Stages (tests/iam_policy.py), and fails on a grant
that reaches a platform service, task, task definition or the platform's data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.assembly import Assembly, Template
from tests.iam_policy import Request, Resolver, allowed, role_statements

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
        own = Resolver(template, resolve.account, resolve.region)
        for logical_id, service in template.of_type("AWS::ECS::Service").items():
            task = template.resources[service["Properties"]["TaskDefinition"]["Ref"]]["Properties"]
            # Roles of another layer resolve to `<Stack.Output>` stand-ins, never to a workspace role's ARN.
            roles = tuple(own(task[key]) for key in ("TaskRoleArn", "ExecutionRoleArn"))
            found.append(PlatformService(layer, logical_id, task["Family"], roles))
    return found


@pytest.fixture
def coder(assembly, stage, env_config):
    platform = assembly.stack(stage, "Platform")
    resolve = Resolver(platform, env_config.account, env_config.region)
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
