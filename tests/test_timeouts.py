"""Keep-alives and timeouts of the platform's HTTP paths, read from the synthesized templates and the shipped LiteLLM
config, in the order constructs_lib/timeouts.py derives them: a model call gives up before the ALB closes the silent
connection, and every target keeps idle connections open longer than the ALB does (else: 502s, and the 5xx alarms roll
deployments back)."""

from __future__ import annotations

import pytest

from constructs_lib.litellm_config import load_litellm_config


@pytest.fixture
def alb_idle_seconds(assembly, stage) -> int:
    platform = assembly.stack(stage, "Platform")
    balancer = platform.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    attributes = {a["Key"]: a["Value"] for a in balancer["LoadBalancerAttributes"]}
    return int(attributes["idle_timeout.timeout_seconds"])


def _environment(template, path: str) -> dict:
    task = template.resources[template.logical_id(f"{path}/Service/TaskDefinition/Resource")]["Properties"]
    container = task["ContainerDefinitions"][0]
    return {e["Name"]: e["Value"] for e in container["Environment"]}


def test_a_silent_model_call_ends_in_litellm_before_the_alb_cuts_it(alb_idle_seconds):
    assert load_litellm_config().request_timeout_seconds < alb_idle_seconds
    assert alb_idle_seconds <= 4000  # the ALB's maximum


def test_litellm_keeps_idle_connections_longer_than_the_alb(assembly, stage, alb_idle_seconds):
    environment = _environment(assembly.stack(stage, "Platform"), "/Platform/LiteLLM")
    assert int(environment["KEEPALIVE_TIMEOUT"]) > alb_idle_seconds  # seconds (uvicorn's timeout_keep_alive)


def test_langfuse_web_keeps_idle_connections_longer_than_the_alb(assembly, stage, env_config, alb_idle_seconds):
    """Every web task behind the ALB (the migrating one and its replicas), by the port it serves."""
    observability = assembly.stack(stage, "Observability")
    web = [
        {e["Name"]: e["Value"] for e in task["Properties"]["ContainerDefinitions"][0]["Environment"]}
        for task in observability.resources.values()
        if task["Type"] == "AWS::ECS::TaskDefinition"
        and task["Properties"]["ContainerDefinitions"][0]["PortMappings"][0]["ContainerPort"] == 3000
    ]
    assert len(web) == (2 if env_config.services.langfuse_web_desired_count > 1 else 1)  # web, and its replicas
    for environment in web:
        assert int(environment["KEEP_ALIVE_TIMEOUT"]) > alb_idle_seconds * 1000  # milliseconds (Next.js)
