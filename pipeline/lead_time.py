"""How long a release takes from push to the last environment: the pipeline's actions in order, derived from the
synthesized pipeline template, each with an estimate and its source, summed for a release that changes nothing in
the environments and for one that replaces every task definition.

`python -m pipeline.lead_time --assembly cdk.out` prints the Markdown table that README "How long a release takes"
holds between its markers; a test regenerates it from the test run's assembly and fails when the README differs.

The sources, by letter: (m) measured on this project's development machine (the command in the README); (t) from
the synthesized templates (health checks, deregistration delays, dependencies, bake minutes); (d) AWS documentation;
(r) reported by third parties, AWS documents no figure; (a) assumed, nothing measured or documented.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.assembly import PIPELINE_STAGE, AssemblyError
from pipeline.changes import read_assembly

# Seconds, each with its source.
PROVISIONING = 70  # (r) an EC2 CodeBuild build's queue and provisioning: "queuing times of 60 seconds and provisioning
#                        times of 10 seconds are not unusual" (cloudonaut.io); AWS documents no figure
SOURCE = 5  # (a) the CodeConnections source action hands over the commit
SYNTH = 40  # (m) `make synth` from a fresh clone, installs (cached pip/npm downloads) and synth included
GUARD = 5  # (a) a Lambda invocation reading the artifact and one template; the decision itself takes milliseconds (m)
SELF_MUTATE = 30  # (a) `cdk deploy` of the unchanged pipeline stack: one change set with no changes; npm install 1.3 s (m)
ASSETS = 15  # (a) cdk-assets finds every asset already published; npm install 0.6 s (m)
INSTALL_BOTO3 = 3  # (m) pip install --require-hashes of buildspecs/locks/boto3.txt, no cache: 2.7 s
REVIEW = 60  # (a) the deployed templates read and their drift detected (DetectStackDrift, four stacks side by side)
COMPLIANCE = 1  # (m) python -m pipeline.compliance on one stage: 0.08 s
STACK_NOOP = 15  # (a) CloudFormation finds nothing to update
STACK_UPDATE = 30  # (a) CloudFormation's own work on a stack whose task definitions change, besides the services
TASK_START = 60  # (a) image pull and the app's start (LiteLLM's proxy starts in about 13 s here, measured by the tests)
CONTAINER_STOP = 30  # (d) ECS_CONTAINER_STOP_TIMEOUT default, 30 s
SMOKE_CHECKS = 10  # (a) the probe's HTTP checks and the target groups' health, read once


@dataclass(frozen=True)
class Step:
    stage: str
    order: int
    names: tuple[str, ...]  # actions that run side by side
    kind: str
    noop: int
    replace: int
    source: str


def _templates(assembly: Path) -> tuple[dict, dict[str, dict[str, dict]]]:
    """The pipeline stack's template, and {Stage: {layer (Network, Data...): template}}."""
    pipeline, stages = None, {}
    for stack in read_assembly(assembly):
        if stack.stage == PIPELINE_STAGE:
            if any(r["Type"] == "AWS::CodePipeline::Pipeline" for r in stack.template.get("Resources", {}).values()):
                pipeline = stack.template
        else:
            stages.setdefault(stack.stage, {})[stack.name.rsplit("-", 1)[-1]] = stack.template
    if pipeline is None:
        raise AssemblyError(f"{assembly}: no pipeline stack")
    return pipeline, stages


def service_seconds(template: dict, service_id: str) -> int:
    """(t) one ECS service replacing its tasks: a new task starts and passes the load balancer's health check
    (interval x healthy threshold), the old one drains (deregistration delay) and stops."""
    resources = template["Resources"]
    service = resources[service_id]["Properties"]
    healthy = drain = 0
    for balancer in service.get("LoadBalancers", []):
        group = resources.get(balancer.get("TargetGroupArn", {}).get("Ref", ""), {}).get("Properties", {})
        attributes = {a["Key"]: a["Value"] for a in group.get("TargetGroupAttributes", [])}
        healthy = max(healthy, int(group.get("HealthCheckIntervalSeconds", 30)) * int(group.get("HealthyThresholdCount", 5)))
        drain = max(drain, int(attributes.get("deregistration_delay.timeout_seconds", 300)))
    return TASK_START + healthy + drain + CONTAINER_STOP


def stack_replace_seconds(template: dict) -> int:
    """(t) every service of a stack replacing its tasks: side by side, but after the services they depend on."""
    services = {lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::ECS::Service"}
    if not services:
        return STACK_NOOP
    done: dict[str, int] = {}

    def finish(lid: str) -> int:
        if lid not in done:
            depends = template["Resources"][lid].get("DependsOn", [])
            before = [finish(d) for d in ([depends] if isinstance(depends, str) else depends) if d in services]
            done[lid] = max(before, default=0) + service_seconds(template, lid)
        return done[lid]

    return STACK_UPDATE + max(finish(lid) for lid in services)


def _bake_minutes(pipeline: dict, action: dict) -> int:
    """(t) the smoke step's bake: its command's --bake-minutes."""
    project = pipeline["Resources"].get(action.get("Configuration", {}).get("ProjectName", {}).get("Ref", ""), {})
    spec = project.get("Properties", {}).get("Source", {}).get("BuildSpec", "")
    words = " ".join(json.loads(spec)["phases"]["build"]["commands"]).split() if spec.lstrip().startswith("{") else []
    return int(words[words.index("--bake-minutes") + 1]) if "--bake-minutes" in words else 0


def steps(assembly: Path) -> list[Step]:
    pipeline, layers = _templates(assembly)
    (props,) = [r["Properties"] for r in pipeline["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    found = []
    for stage in props["Stages"]:
        groups: dict[int, list[dict]] = {}
        for action in stage["Actions"]:
            groups.setdefault(action["RunOrder"], []).append(action)
        for order, actions in sorted(groups.items()):
            names = tuple(sorted(a["Name"] for a in actions))
            provider = actions[0]["ActionTypeId"]["Provider"]
            category = actions[0]["ActionTypeId"]["Category"]
            found.append(_estimate(stage["Name"], order, names, provider, category, pipeline, layers, actions))
    return found


def _estimate(stage: str, order: int, names: tuple[str, ...], provider: str, category: str, pipeline: dict,
              layers: dict[str, dict[str, dict]], actions: list[dict]) -> Step:
    if category == "Source":
        return Step(stage, order, names, "source", SOURCE, SOURCE, "a")
    if category == "Approval":
        return Step(stage, order, names, "a person approves", 0, 0, "not counted")
    if provider == "Lambda":
        return Step(stage, order, names, "Lambda", GUARD, GUARD, "a, m")
    if provider == "CloudFormation":
        layer = names[0].split(".")[0]
        template = layers.get(stage, {}).get(layer, {"Resources": {}})
        return Step(stage, order, names, "CloudFormation", STACK_NOOP, stack_replace_seconds(template), "a, t, d")
    if names == ("Synth",):
        return Step(stage, order, names, "CodeBuild (EC2, medium)", PROVISIONING + SYNTH, PROVISIONING + SYNTH, "r, m")
    if names == ("SelfMutate",):
        return Step(stage, order, names, "CodeBuild (EC2)", PROVISIONING + SELF_MUTATE, PROVISIONING + SELF_MUTATE, "r, a, m")
    if stage == "Assets":
        return Step(stage, order, names, "CodeBuild (EC2)", PROVISIONING + ASSETS, PROVISIONING + ASSETS, "r, a, m")
    if any(name.startswith("Review") for name in names):  # beside the compliance report: the longer of the two
        seconds = PROVISIONING + max(COMPLIANCE, INSTALL_BOTO3 + REVIEW)
        return Step(stage, order, names, "CodeBuild (EC2), side by side", seconds, seconds, "r, m, a")
    if any(name.startswith("SmokeTests") for name in names):
        seconds = PROVISIONING + INSTALL_BOTO3 + SMOKE_CHECKS + 60 * max(_bake_minutes(pipeline, a) for a in actions)
        return Step(stage, order, names, "CodeBuild (EC2)", seconds, seconds, "r, m, a, t")
    return Step(stage, order, names, provider, PROVISIONING, PROVISIONING, "r")


def _minutes(seconds: int) -> str:
    return f"{seconds / 60:.1f}"


def render(found: list[Step]) -> str:
    lines = ["| # | stage | action(s), side by side | runs on | no-op release (min) | every task definition replaced "
             "(min) | source |", "| ---: | --- | --- | --- | ---: | ---: | --- |"]
    for number, step in enumerate(found, start=1):
        lines.append(f"| {number} | {step.stage} | {', '.join(step.names)} | {step.kind} | {_minutes(step.noop)} | "
                     f"{_minutes(step.replace)} | {step.source} |")
    lines.append(f"| | | **total** (approval waits not counted) | | **{_minutes(sum(s.noop for s in found))}** | "
                 f"**{_minutes(sum(s.replace for s in found))}** | |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.lead_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assembly", type=Path, default=Path("cdk.out"), help="the synthesized cloud assembly")
    args = parser.parse_args(argv)
    try:
        print(render(steps(args.assembly)), end="")
    except AssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
