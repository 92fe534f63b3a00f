"""Keeps workspaces out of the platform's traffic: what IAM cannot say about Coder's ECS calls.

Coder may create services and run tasks in the workspaces' cluster, and ECS does not check what such a service joins:
its `loadBalancers` may name a platform target group (ECS registers the tasks with its own service-linked role), its
`serviceRegistries` a platform Cloud Map name, its network configuration any security group. A template, or whoever
takes Coder over, could so put a task of theirs behind `ai.`, `coder.`, `admin.` or `langfuse.`. No IAM condition
key covers these parameters, so this function looks, every 15 seconds (4 sweeps a minute, run each minute):

- a platform target group's target that is no task of the platform's cluster is deregistered; a new target only
  receives traffic once two health checks 30 s apart pass, so it is gone before it does;
- a workspace target group (`ws-*`, direct access) that holds a platform task's address is emptied of it;
- a workspace service (in the workspaces' cluster, or one an earlier release left in the platform's, tagged
  coder_provisioned) that names a platform target group, any service registry or Service Connect, another security
  group than the workspaces', or a public IP is deleted; a workspace task in another security group is stopped.

Every action is logged as one JSON line with `"intrusions"`: the alarm `workspace-guard-intrusions` counts them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable

import boto3

SWEEPS = 4
INTERVAL_SECONDS = 15
WORKSPACE_TARGET_GROUP_PREFIX = "ws-"


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _task_arns(ecs, cluster: str) -> list[str]:
    arns, token = [], None
    while True:
        page = ecs.list_tasks(cluster=cluster, **({"nextToken": token} if token else {}))
        arns += page["taskArns"]
        token = page.get("nextToken")
        if not token:
            return arns


def _tasks(ecs, cluster: str) -> list[dict]:
    arns = _task_arns(ecs, cluster)
    return [task for chunk in _chunks(arns, 100) for task in ecs.describe_tasks(cluster=cluster, tasks=chunk)["tasks"]]


def _eni(task: dict) -> dict[str, str]:
    """The task's network interface details (awsvpc): privateIPv4Address, networkInterfaceId, subnetId."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") == "ElasticNetworkInterface":
            return {d["name"]: d["value"] for d in attachment.get("details", [])}
    return {}


def _coder_provisioned(service: dict) -> bool:
    return {"key": "coder_provisioned", "value": "true"} in service.get("tags", [])


def platform_addresses(tasks: list[dict], platform_services: set[str]) -> set[str]:
    """The addresses of the platform services' own tasks: the only targets the platform's target groups may hold.
    (A workspace an earlier release left in the platform's cluster, tagged coder_provisioned, is no platform service.)"""
    return {ip for task in tasks
            if task.get("group", "").removeprefix("service:") in platform_services
            and (ip := _eni(task).get("privateIPv4Address"))}


def intruders(health: list[dict], legitimate: set[str]) -> list[dict]:
    """Targets that are no platform task (draining ones are already leaving)."""
    return [d["Target"] for d in health
            if d["Target"]["Id"] not in legitimate and d.get("TargetHealth", {}).get("State") != "draining"]


def _services(ecs, cluster: str) -> list[dict]:
    arns, token = [], None
    while True:
        page = ecs.list_services(cluster=cluster, **({"nextToken": token} if token else {}))
        arns += page["serviceArns"]
        token = page.get("nextToken")
        if not token:
            break
    return [s for chunk in _chunks(arns, 10)
            for s in ecs.describe_services(cluster=cluster, services=chunk, include=["TAGS"])["services"]]


def service_offences(service: dict, platform_target_groups: set[str], workspace_group: str) -> list[str]:
    """Why a workspace service must not run (empty: it may)."""
    found = [f"joins the platform target group {lb['targetGroupArn']}" for lb in service.get("loadBalancers", [])
             if lb.get("targetGroupArn") in platform_target_groups]
    if service.get("serviceRegistries"):
        found.append("registers in Cloud Map")
    if service.get("serviceConnectConfiguration", {}).get("enabled"):
        found.append("uses Service Connect")
    network = service.get("networkConfiguration", {}).get("awsvpcConfiguration", {})
    if network.get("securityGroups", [workspace_group]) != [workspace_group]:
        found.append(f"runs in security groups {network.get('securityGroups')}")
    if network.get("assignPublicIp") == "ENABLED":
        found.append("gets a public IP")
    return found


def sweep(ecs, elbv2, ec2, *, platform_cluster: str, workspace_cluster: str, platform_target_groups: list[str],
          workspace_group: str) -> list[dict]:
    """One look at everything; returns what it did (one entry per intrusion)."""
    done: list[dict] = []
    # Targets first, then the platform's tasks: a platform task registered before the first read is running, and
    # listed, by the second; read the other way round, one starting in between would look like an intruder.
    health = {group: elbv2.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]
              for group in platform_target_groups}
    in_platform_cluster = _services(ecs, platform_cluster)
    legacy = [s for s in in_platform_cluster if _coder_provisioned(s)]
    platform_services = {s["serviceName"] for s in in_platform_cluster if not _coder_provisioned(s)}
    legitimate = platform_addresses(_tasks(ecs, platform_cluster), platform_services)
    for target_group in platform_target_groups:
        found = intruders(health[target_group], legitimate)
        if found:
            elbv2.deregister_targets(TargetGroupArn=target_group, Targets=found)
            done += [{"action": "deregistered", "target_group": target_group, "target": t} for t in found]

    token = None
    while True:
        page = elbv2.describe_target_groups(**({"Marker": token} if token else {}))
        for group in page["TargetGroups"]:
            if not group["TargetGroupName"].startswith(WORKSPACE_TARGET_GROUP_PREFIX):
                continue
            targets = elbv2.describe_target_health(TargetGroupArn=group["TargetGroupArn"])["TargetHealthDescriptions"]
            platform = [d["Target"] for d in targets if d["Target"]["Id"] in legitimate]
            if platform:
                elbv2.deregister_targets(TargetGroupArn=group["TargetGroupArn"], Targets=platform)
                done += [{"action": "deregistered", "target_group": group["TargetGroupArn"], "target": t} for t in platform]
        token = page.get("NextMarker")
        if not token:
            break

    platform_groups = set(platform_target_groups)
    for cluster, services in ((workspace_cluster, _services(ecs, workspace_cluster)), (platform_cluster, legacy)):
        for service in services:
            offences = service_offences(service, platform_groups, workspace_group)
            if offences:
                ecs.delete_service(cluster=cluster, service=service["serviceArn"], force=True)
                done.append({"action": "deleted service", "service": service["serviceArn"], "why": offences})

    tasks = {_eni(task).get("networkInterfaceId"): task for task in _tasks(ecs, workspace_cluster)}
    tasks.pop(None, None)
    for chunk in _chunks(sorted(tasks), 100):
        for interface in ec2.describe_network_interfaces(NetworkInterfaceIds=chunk)["NetworkInterfaces"]:
            groups = sorted(g["GroupId"] for g in interface.get("Groups", []))
            if groups != [workspace_group]:
                task = tasks[interface["NetworkInterfaceId"]]
                ecs.stop_task(cluster=workspace_cluster, task=task["taskArn"],
                              reason="workspace guard: workspaces run in the workspaces' security group only")
                done.append({"action": "stopped task", "task": task["taskArn"], "why": f"security groups {groups}"})
    return done


def handler(event: dict, context, clients: tuple | None = None, sleep=time.sleep) -> dict:
    ecs, elbv2, ec2 = clients or (boto3.client("ecs"), boto3.client("elbv2"), boto3.client("ec2"))
    settings = {
        "platform_cluster": os.environ["PLATFORM_CLUSTER"],
        "workspace_cluster": os.environ["WORKSPACE_CLUSTER"],
        "platform_target_groups": os.environ["PLATFORM_TARGET_GROUPS"].split(),
        "workspace_group": os.environ["WORKSPACE_SECURITY_GROUP"],
    }
    total = 0
    for index in range(SWEEPS):
        done = sweep(ecs, elbv2, ec2, **settings)
        total += len(done)
        print(json.dumps({"sweep": index, "intrusions": len(done), "actions": done}, default=str))
        if index < SWEEPS - 1:
            sleep(INTERVAL_SECONDS)
    return {"intrusions": total}
