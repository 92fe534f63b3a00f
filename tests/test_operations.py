"""Operating the platform: an alarm topic per environment, alarms on every tier, deployment alarms that roll a
service back, a dashboard, and production's pipeline stage that rolls back on failure."""

from __future__ import annotations

import json

import pytest

from tests.synths import VARIANT_EMAIL
from tests.test_config import BASE, problems_of

LAYERS = ("Network", "Data", "Platform", "Observability")


def _alarms(assembly, stage) -> dict[str, tuple[str, dict]]:
    """Alarm name -> (stack, properties), over the Stage's stacks."""
    found = {}
    for layer in LAYERS:
        template = assembly.stack(stage, layer)
        for props in template.props("AWS::CloudWatch::Alarm"):
            found[props["AlarmName"]] = (template.stack_name, props)
    return found


def _topic(assembly, stage) -> tuple[str, str]:
    network = assembly.stack(stage, "Network")
    return network.stack_name, network.logical_id("/Network/Alarms/Topic/Resource")


def test_one_encrypted_https_only_topic_per_environment(assembly, stage, env_config):
    network = assembly.stack(stage, "Network")
    topic = network.resources[network.logical_id("/Network/Alarms/Topic/Resource")]["Properties"]
    assert topic["TopicName"] == f"{env_config.qualifier}-alarms"  # same-account environments never collide
    key_id = network.logical_id("/Network/Alarms/Key/Resource")
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    key = network.resources[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    (cloudwatch,) = [s for s in key["KeyPolicy"]["Statement"] if s.get("Sid") == "CloudWatchAlarmsOfThisAccount"]
    assert cloudwatch["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert cloudwatch["Condition"] == {"StringEquals": {"aws:SourceAccount": env_config.account}}
    (policy,) = network.props("AWS::SNS::TopicPolicy")
    assert {"Bool": {"aws:SecureTransport": "false"}} in [s.get("Condition") for s in policy["PolicyDocument"]["Statement"]]
    assert network.props("AWS::SNS::Subscription") == []  # no e-mail in the shipped config


def test_the_topic_mails_the_pipelines_address_when_the_environment_names_none(variant):
    network = variant.assembly.stack("Staging", "Network")
    (subscription,) = network.props("AWS::SNS::Subscription")
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", VARIANT_EMAIL)


def test_every_alarm_notifies_the_environments_topic_on_alarm_and_ok(assembly, stage):
    network_stack, topic = _topic(assembly, stage)
    alarms = _alarms(assembly, stage)
    assert len(alarms) >= 40
    for name, (stack, props) in alarms.items():
        expected = [{"Ref": topic}] if stack == network_stack else None
        for key in ("AlarmActions", "OKActions"):
            (action,) = props[key]
            if expected:
                assert props[key] == expected, name
            else:
                output = action["Fn::GetStackOutput"]
                assert output["StackName"] == network_stack and "AlarmsTopic" in output["OutputName"], name
        assert len(props["AlarmDescription"]) > 60 and "first" in props["AlarmDescription"], name  # what to look at


def test_every_service_has_its_running_task_cpu_and_memory_alarms(assembly, stage, env_config):
    """ClickHouse and the Langfuse worker included: each ECS service is named by three alarms of its own stack."""
    for layer in ("Platform", "Observability"):
        template = assembly.stack(stage, layer)
        services = template.of_type("AWS::ECS::Service")
        assert services
        for lid in services:
            by_service = {p["AlarmName"]: p for p in template.props("AWS::CloudWatch::Alarm")
                          if json.dumps({"Fn::GetAtt": [lid, "Name"]}) in json.dumps(p)}
            suffixes = sorted(name.rsplit("-", 1)[-1] if not name.endswith("tasks-below-desired") else "tasks-below-desired"
                              for name in by_service)
            assert suffixes == ["cpu", "memory", "tasks-below-desired"], (lid, sorted(by_service))
            for name, props in by_service.items():
                limit = {"cpu": env_config.alarms.ecs_cpu_percent, "memory": env_config.alarms.ecs_memory_percent}.get(
                    name.rsplit("-", 1)[-1], 0)
                assert props["Threshold"] == limit, name


def test_services_behind_the_alb_roll_back_on_their_5xx_and_unhealthy_host_alarms(assembly, stage, env_config):
    alarms = _alarms(assembly, stage)
    rolled_back = {}
    for layer in ("Platform", "Observability"):
        for service in assembly.stack(stage, layer).props("AWS::ECS::Service"):
            config = service["DeploymentConfiguration"]
            assert config["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
            if service.get("LoadBalancers"):
                rolled_back[json.dumps(service["LoadBalancers"][0]["TargetGroupArn"])] = config["Alarms"]
            else:
                assert "Alarms" not in config
    assert len(rolled_back) == 4  # coder, litellm, key provisioner, langfuse web (its replicas share its group)
    for settings in rolled_back.values():
        assert settings["Enable"] is True and settings["Rollback"] is True
        five_xx, unhealthy = settings["AlarmNames"]
        assert five_xx.endswith("-5xx") and unhealthy.endswith("-unhealthy-hosts")
        assert alarms[five_xx][1]["Threshold"] == env_config.alarms.target_5xx_percent
        assert alarms[unhealthy][1]["Threshold"] == 0


def test_api_services_have_a_p95_alarm_but_not_coder(assembly, stage, env_config):
    alarms = _alarms(assembly, stage)
    q = env_config.qualifier
    for name in ("litellm", "key-provisioner", "langfuse-web"):
        props = alarms[f"{q}-{name}-p95-response-time"][1]
        assert props["Threshold"] == env_config.alarms.response_time_p95_seconds and props["ExtendedStatistic"] == "p95"
    assert f"{q}-coder-p95-response-time" not in alarms  # WebSockets held open for hours


def test_shared_tiers_alarm_from_the_configured_thresholds(assembly, stage, env_config):
    alarms, limits, q = _alarms(assembly, stage), env_config.alarms, env_config.qualifier
    assert alarms[f"{q}-rds-cpu"][1]["Threshold"] == limits.rds_cpu_percent
    free = alarms[f"{q}-rds-free-storage"][1]
    assert free["Threshold"] == env_config.database.max_allocated_storage_gb * 1024**3 * limits.rds_free_storage_percent / 100
    assert free["ComparisonOperator"] == "LessThanThreshold"
    assert alarms[f"{q}-rds-connections"][1]["Threshold"] == limits.rds_connections
    for node in ("001", "002"):
        assert alarms[f"{q}-redis-{node}-memory"][1]["Threshold"] == limits.redis_memory_percent
        assert alarms[f"{q}-redis-{node}-evictions"][1]["Threshold"] == 0
    assert alarms[f"{q}-efs-io-limit"][1]["Threshold"] == limits.efs_io_limit_percent
    assert alarms[f"{q}-alb-5xx"][1]["Threshold"] == limits.alb_5xx_percent
    lambdas = {n for n in alarms if n.endswith("-errors")}
    expected = {"database-bootstrap", "secret-initializer", "smoke-probe", "workspace-guard"} | (
        {"termination-protection"} if env_config.is_production else set())
    assert lambdas == {f"{q}-{name}-errors" for name in expected}


def test_the_dashboard_shows_this_environment_only(assembly, stage, env_config):
    observability = assembly.stack(stage, "Observability")
    (dashboard,) = observability.props("AWS::CloudWatch::Dashboard")
    assert dashboard["DashboardName"] == env_config.qualifier
    parts = dashboard["DashboardBody"]["Fn::Join"][1]
    text = "".join(p for p in parts if isinstance(p, str))
    for tier in ("Load balancer", "Services", "Database", "Cache", "File system"):
        assert f"## {tier}" in text
    references = [p for p in parts if not isinstance(p, str)]
    assert references
    for reference in references:
        if "Fn::GetStackOutput" in reference:
            assert reference["Fn::GetStackOutput"]["StackName"].startswith(f"{env_config.stage_id}-"), reference
        elif "Ref" in reference or "Fn::GetAtt" in reference:
            target = reference.get("Ref") or reference["Fn::GetAtt"][0]
            assert target.startswith("AWS::") or target in observability.resources, reference


def test_production_rolls_back_on_failure(assembly):
    (pipeline,) = assembly.templates["CoderPipeline"].props("AWS::CodePipeline::Pipeline")
    rollbacks = {s["Name"]: s.get("OnFailure") for s in pipeline["Stages"]}
    assert rollbacks["Production"] == {"Result": "ROLLBACK"}
    assert rollbacks["Staging"] is None


@pytest.mark.parametrize(("edit", "fragments"), [
    (("rds_cpu_percent = 80", "rds_cpu_percent = 0"), ["staging.alarms.rds_cpu_percent = 0", "out of range",
                                                        "a percentage from 1 to 100"]),
    (("redis_memory_percent = 80", "redis_memory_percent = 120"), ["staging.alarms.redis_memory_percent = 120", "out of range"]),
    (('email = ""\nalb_5xx_percent', 'email = "on-call"\nalb_5xx_percent'), ["staging.alarms.email = 'on-call'",
                                                                            "not an e-mail address"]),
    (("response_time_p95_seconds = 30", 'response_time_p95_seconds = "30"'), ["expected an integer, got str"]),
])
def test_bad_thresholds_are_refused_with_a_clear_message(edit, fragments):
    joined = "\n".join(problems_of(BASE.replace(*edit, 1)))
    for fragment in fragments:
        assert fragment in joined, joined
