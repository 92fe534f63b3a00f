"""The workspace guard (constructs_lib/lambdas/workspace_guard/): what it removes and what it leaves, against
botocore's Stubber, which checks every request and response against the services' own models (moto's ECS cannot
run awsvpc tasks: its run_task fails on their network interfaces), and the function as the Stage deploys it."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber

from tests.iam_policy import Request, Resolver, allowed, role_statements
from tests.lambdas import load_handler

guard = load_handler("workspace_guard")

ACCOUNT, REGION = "222222222222", "us-west-2"
PLATFORM, WORKSPACES = "coder-staging", "coder-staging-workspaces"
LITELLM_TG = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/Stagin-LiteL-1A2B3C4D/0123456789abcdef"
WS_TG = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/ws-alice-dev/1111111111111111"
OTHER_TG = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/other/2222222222222222"
WORKSPACE_SG, ALB_SG = "sg-0aaaaaaaaaaaaaaaa", "sg-0bbbbbbbbbbbbbbbb"
LITELLM_IP, ATTACKER_IP, LEAVING_IP, ALICE_IP = "10.1.10.10", "10.1.11.99", "10.1.11.50", "10.1.11.7"


def _client(service: str):
    return boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def clients():
    made = {name: _client(name) for name in ("ecs", "elbv2", "ec2")}
    stubbers = {name: Stubber(client) for name, client in made.items()}
    for stubber in stubbers.values():
        stubber.activate()
    yield made, stubbers
    for stubber in stubbers.values():
        stubber.assert_no_pending_responses()
        stubber.deactivate()


def _target(ip: str, port: int, state: str) -> dict:
    return {"Target": {"Id": ip, "Port": port}, "TargetHealth": {"State": state}}


def _task(cluster: str, task_id: str, ip: str, eni: str, service: str | None = None) -> dict:
    return {"taskArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/{task_id}",
            **({"group": f"service:{service}"} if service else {}), "attachments": [{
        "type": "ElasticNetworkInterface", "details": [
            {"name": "privateIPv4Address", "value": ip}, {"name": "networkInterfaceId", "value": eni}]}]}


def _service(name: str, groups: list[str], target_group: str | None = None, cluster: str = WORKSPACES,
             **extra) -> dict:
    return {"serviceArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/{name}", "serviceName": name,
            "loadBalancers": [{"targetGroupArn": target_group, "containerName": "dev", "containerPort": 13337}]
            if target_group else [],
            "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": groups}}, **extra}


def test_one_sweep_removes_what_reaches_into_the_platform_and_leaves_the_rest(clients):
    made, stub = clients
    ecs, elbv2, ec2 = made["ecs"], made["elbv2"], made["ec2"]
    lb = stub["elbv2"]
    lb.add_response("describe_target_health", {"TargetHealthDescriptions": [
        _target(LITELLM_IP, 4000, "healthy"),  # LiteLLM's own task
        _target(ATTACKER_IP, 13337, "initial"),  # a workspace service that named LiteLLM's target group
        _target(LEAVING_IP, 13337, "draining"),  # already leaving
    ]}, {"TargetGroupArn": LITELLM_TG})
    # The platform's cluster: LiteLLM, and a workspace an earlier release left there (tagged as Coder's) that now
    # names LiteLLM's target group: its task's address is no platform address.
    litellm = _service("Staging-Platform-LiteLLMService", [ALB_SG], LITELLM_TG, cluster=PLATFORM)
    legacy = _service("coder-bob-dev", [WORKSPACE_SG], LITELLM_TG, cluster=PLATFORM,
                      tags=[{"key": "coder_provisioned", "value": "true"}])
    stub["ecs"].add_response("list_services", {"serviceArns": [litellm["serviceArn"], legacy["serviceArn"]]},
                             {"cluster": PLATFORM})
    stub["ecs"].add_response("describe_services", {"services": [litellm, legacy]},
                             {"cluster": PLATFORM, "services": ANY, "include": ["TAGS"]})
    platform_task = _task(PLATFORM, "aaaa", LITELLM_IP, "eni-platform", litellm["serviceName"])
    legacy_task = _task(PLATFORM, "dddd", "10.1.10.77", "eni-legacy", legacy["serviceName"])
    stub["ecs"].add_response("list_tasks", {"taskArns": [platform_task["taskArn"], legacy_task["taskArn"]]},
                             {"cluster": PLATFORM})
    stub["ecs"].add_response("describe_tasks", {"tasks": [platform_task, legacy_task]}, {"cluster": PLATFORM, "tasks": ANY})
    lb.add_response("deregister_targets", {}, {"TargetGroupArn": LITELLM_TG,
                                                "Targets": [{"Id": ATTACKER_IP, "Port": 13337}]})
    # Direct access: Alice's target group may hold her workspace, never a platform task (the admin UI without sign-in).
    lb.add_response("describe_target_groups", {"TargetGroups": [
        {"TargetGroupArn": WS_TG, "TargetGroupName": "ws-alice-dev"},
        {"TargetGroupArn": OTHER_TG, "TargetGroupName": "other"}]}, {})
    lb.add_response("describe_target_health", {"TargetHealthDescriptions": [
        _target(ALICE_IP, 13337, "healthy"), _target(LITELLM_IP, 8100, "initial")]}, {"TargetGroupArn": WS_TG})
    lb.add_response("deregister_targets", {}, {"TargetGroupArn": WS_TG, "Targets": [{"Id": LITELLM_IP, "Port": 8100}]})
    services = [
        _service("coder-alice-dev", [WORKSPACE_SG], WS_TG),  # fine
        _service("evil", [WORKSPACE_SG], LITELLM_TG),
        _service("sneaky", [ALB_SG]),
        _service("listed", [WORKSPACE_SG], serviceRegistries=[{"registryArn": "arn:aws:servicediscovery:x:1:service/srv-1"}]),
    ]
    stub["ecs"].add_response("list_services", {"serviceArns": [s["serviceArn"] for s in services]}, {"cluster": WORKSPACES})
    stub["ecs"].add_response("describe_services", {"services": services},
                             {"cluster": WORKSPACES, "services": ANY, "include": ["TAGS"]})
    for service in services[1:]:
        stub["ecs"].add_response("delete_service", {}, {"cluster": WORKSPACES, "service": service["serviceArn"],
                                                        "force": True})
    stub["ecs"].add_response("delete_service", {}, {"cluster": PLATFORM, "service": legacy["serviceArn"], "force": True})
    alice, stray = _task(WORKSPACES, "bbbb", ALICE_IP, "eni-alice"), _task(WORKSPACES, "cccc", "10.1.11.8", "eni-stray")
    stub["ecs"].add_response("list_tasks", {"taskArns": [alice["taskArn"], stray["taskArn"]]}, {"cluster": WORKSPACES})
    stub["ecs"].add_response("describe_tasks", {"tasks": [alice, stray]}, {"cluster": WORKSPACES, "tasks": ANY})
    stub["ec2"].add_response("describe_network_interfaces", {"NetworkInterfaces": [
        {"NetworkInterfaceId": "eni-alice", "Groups": [{"GroupId": WORKSPACE_SG}]},
        {"NetworkInterfaceId": "eni-stray", "Groups": [{"GroupId": ALB_SG}]}]},
        {"NetworkInterfaceIds": ["eni-alice", "eni-stray"]})
    stub["ecs"].add_response("stop_task", {}, {"cluster": WORKSPACES, "task": stray["taskArn"], "reason": ANY})

    done = guard.sweep(ecs, elbv2, ec2, platform_cluster=PLATFORM, workspace_cluster=WORKSPACES,
                       platform_target_groups=[LITELLM_TG], workspace_group=WORKSPACE_SG)
    assert [d["action"] for d in done] == ["deregistered", "deregistered", "deleted service", "deleted service",
                                           "deleted service", "deleted service", "stopped task"]
    assert [d["why"] for d in done if d["action"] == "deleted service"] == [
        [f"joins the platform target group {LITELLM_TG}"], [f"runs in security groups {[ALB_SG]}"], ["registers in Cloud Map"],
        [f"joins the platform target group {LITELLM_TG}"]]
    # LiteLLM's own service (not Coder's) is never touched, although it runs in another group than the workspaces'.
    assert litellm["serviceArn"] not in json.dumps(done)


def test_a_quiet_platform_is_left_alone(clients):
    made, stub = clients
    ecs, elbv2, ec2 = made["ecs"], made["elbv2"], made["ec2"]
    stub["elbv2"].add_response("describe_target_health", {"TargetHealthDescriptions": [
        _target(LITELLM_IP, 4000, "healthy")]}, {"TargetGroupArn": LITELLM_TG})
    litellm = _service("Staging-Platform-LiteLLMService", [ALB_SG], LITELLM_TG, cluster=PLATFORM)
    stub["ecs"].add_response("list_services", {"serviceArns": [litellm["serviceArn"]]}, {"cluster": PLATFORM})
    stub["ecs"].add_response("describe_services", {"services": [litellm]},
                             {"cluster": PLATFORM, "services": ANY, "include": ["TAGS"]})
    platform_task = _task(PLATFORM, "aaaa", LITELLM_IP, "eni-platform", litellm["serviceName"])
    stub["ecs"].add_response("list_tasks", {"taskArns": [platform_task["taskArn"]]}, {"cluster": PLATFORM})
    stub["ecs"].add_response("describe_tasks", {"tasks": [platform_task]}, {"cluster": PLATFORM, "tasks": ANY})
    stub["elbv2"].add_response("describe_target_groups", {"TargetGroups": []}, {})
    stub["ecs"].add_response("list_services", {"serviceArns": []}, {"cluster": WORKSPACES})
    stub["ecs"].add_response("list_tasks", {"taskArns": []}, {"cluster": WORKSPACES})
    assert guard.sweep(ecs, elbv2, ec2, platform_cluster=PLATFORM, workspace_cluster=WORKSPACES,
                       platform_target_groups=[LITELLM_TG], workspace_group=WORKSPACE_SG) == []


def test_the_handler_sweeps_four_times_a_minute_and_logs_the_count(monkeypatch, capsys):
    monkeypatch.setenv("PLATFORM_CLUSTER", PLATFORM)
    monkeypatch.setenv("WORKSPACE_CLUSTER", WORKSPACES)
    monkeypatch.setenv("PLATFORM_TARGET_GROUPS", f"{LITELLM_TG} {OTHER_TG}")
    monkeypatch.setenv("WORKSPACE_SECURITY_GROUP", WORKSPACE_SG)
    seen, slept = [], []

    def sweep(*clients, **settings):
        seen.append(settings)
        return [{"action": "deregistered"}] if len(seen) == 2 else []

    monkeypatch.setattr(guard, "sweep", sweep)
    result = guard.handler({}, None, clients=(None, None, None), sleep=slept.append)
    assert result == {"intrusions": 1} and slept == [15, 15, 15]
    assert seen[0]["platform_target_groups"] == [LITELLM_TG, OTHER_TG]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["intrusions"] for line in lines] == [0, 1, 0, 0]  # what the metric filter counts


# --- as the Stage deploys it ---------------------------------------------------------------------------------------


@pytest.fixture
def observability(assembly, stage):
    return assembly.stack(stage, "Observability")


def test_the_guard_runs_every_minute_and_alarms_on_an_intrusion(observability, env_config):
    (rule,) = observability.props("AWS::Events::Rule")
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    function = observability.resources[observability.logical_id("/Observability/WorkspaceGuard/Function/Resource")]
    variables = function["Properties"]["Environment"]["Variables"]
    assert (variables["PLATFORM_CLUSTER"], variables["WORKSPACE_CLUSTER"]) == (env_config.qualifier,
                                                                                env_config.workspace_cluster_name)
    groups = json.dumps(variables["PLATFORM_TARGET_GROUPS"])
    for service in ("Coder", "LiteLLM", "KeyProvisioner", "LangfuseWeb"):
        assert f"{service}ServiceTargetGroup" in groups or f"{service}TargetGroup" in groups, service
    assert "EcsWorkspacesSecurityGroup" in json.dumps(variables["WORKSPACE_SECURITY_GROUP"])
    assert function["Properties"]["Timeout"] == 90 > guard.SWEEPS * guard.INTERVAL_SECONDS
    (metric_filter,) = observability.props("AWS::Logs::MetricFilter")
    assert metric_filter["FilterPattern"] == "{ $.intrusions >= 0 }"
    alarm = observability.resources[observability.logical_id("/Observability/WorkspaceGuard/IntrusionsAlarm/Resource")]
    assert alarm["Properties"]["AlarmName"] == f"coder-{env_config.name}-workspace-guard-intrusions"
    assert alarm["Properties"]["Threshold"] == 0 and alarm["Properties"]["EvaluationPeriods"] == 1


def test_the_guards_role_removes_only_what_reaches_into_the_platform(assembly, stage, env_config, observability):
    resolve = Resolver(observability, env_config.account, env_config.region, stacks=assembly.templates)
    role = observability.logical_id("/Observability/WorkspaceGuard/Function/ServiceRole/Resource")
    statements = role_statements(observability, role, resolve)
    platform, workspaces = env_config.qualifier, env_config.workspace_cluster_name
    platform_service = resolve.arn("ecs", f"service/{platform}/LiteLLMService")
    assert allowed(statements, Request("ecs:DeleteService", resolve.arn("ecs", f"service/{workspaces}/evil")))
    assert allowed(statements, Request("ecs:DeleteService", resolve.arn("ecs", f"service/{platform}/coder-bob-dev"),
                                       {"aws:ResourceTag/coder_provisioned": "true"}))
    assert allowed(statements, Request("ecs:StopTask", resolve.arn("ecs", f"task/{workspaces}/cccc")))
    assert allowed(statements, Request("elasticloadbalancing:DeregisterTargets",
                                       resolve.arn("elasticloadbalancing", "targetgroup/ws-alice-dev/1111")))
    for refused in (
        Request("ecs:DeleteService", platform_service), Request("ecs:UpdateService", platform_service),
        Request("ecs:StopTask", resolve.arn("ecs", f"task/{platform}/aaaa")),
        Request("ecs:CreateService", resolve.arn("ecs", f"service/{workspaces}/new")),
        Request("elasticloadbalancing:RegisterTargets", resolve.arn("elasticloadbalancing", "targetgroup/ws-x/1")),
        Request("elasticloadbalancing:DeregisterTargets", resolve.arn("elasticloadbalancing", "targetgroup/other/2")),
        Request("iam:PassRole", "*"),
    ):
        assert not allowed(statements, refused), refused
