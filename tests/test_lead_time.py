"""README "How long a release takes": the action list and its estimates, derived from the synthesized templates."""

from __future__ import annotations

import re

from pipeline import lead_time
from tests.assembly import ROOT


def test_the_readme_table_is_what_the_templates_derive(assembly):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- lead-time:begin -->\n", 1)[1].split("<!-- lead-time:end -->", 1)[0]
    assert block == lead_time.render(lead_time.steps(assembly.directory)), (
        "the pipeline changed: python -m pipeline.lead_time --assembly cdk.out, and put its table in the README")


def test_every_action_of_the_pipeline_is_a_row_in_order(assembly):
    (props,) = assembly.templates["CoderPipeline"].props("AWS::CodePipeline::Pipeline")
    expected = [(stage["Name"], tuple(sorted(a["Name"] for a in stage["Actions"] if a["RunOrder"] == order)))
                for stage in props["Stages"] for order in sorted({a["RunOrder"] for a in stage["Actions"]})]
    assert [(s.stage, s.names) for s in lead_time.steps(assembly.directory)] == expected
    assert not [s for s in lead_time.steps(assembly.directory) if any(".Prepare" in n for n in s.names)]


def test_the_estimates_follow_the_templates(assembly):
    """A rolled service: start + health checks (interval x threshold) + deregistration delay + stop; Langfuse web after
    ClickHouse and its replicas after it; the smoke step's bake from its command."""
    observability = assembly.stack("Production", "Observability").body
    web = observability["Resources"][assembly.stack("Production", "Observability").logical_id(
        "/Observability/Langfuse/Web/Service/Service")]
    assert web["Type"] == "AWS::ECS::Service"
    group = next(r["Properties"] for r in observability["Resources"].values()
                 if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup")
    attributes = {a["Key"]: int(a["Value"]) for a in group["TargetGroupAttributes"] if a["Key"].startswith("deregistration")}
    expected = (lead_time.TASK_START + group["HealthCheckIntervalSeconds"] * group["HealthyThresholdCount"]
                + attributes["deregistration_delay.timeout_seconds"] + lead_time.CONTAINER_STOP)
    web_id = next(lid for lid, r in observability["Resources"].items() if r is web)
    assert lead_time.service_seconds(observability, web_id) == expected
    rows = {(s.stage, s.names): s for s in lead_time.steps(assembly.directory)}
    smoke = rows[("Production", ("SmokeTestsProduction",))]
    assert smoke.noop == lead_time.PROVISIONING + lead_time.INSTALL_BOTO3 + lead_time.SMOKE_CHECKS + 30 * 60
    chain = lead_time.stack_replace_seconds(observability) - lead_time.STACK_UPDATE
    assert chain >= 2 * expected  # ClickHouse, then web, then its replicas
    assert re.search(r"\| \*\*total\*\* \(approval waits not counted\) \| \| \*\*\d+\.\d\*\* \| \*\*\d+\.\d\*\* \|",
                     lead_time.render(list(rows.values())))
    assert rows[("Production", ("PromoteToProduction",))].noop == 0
