"""The release review's drift gate (`python -m pipeline.changes --base deployed --drift`): CloudFormation drift detection
of the deployed stacks through each environment's lookup role, fed by botocore's Stubber with what CloudFormation
answers. Drift on a stateful resource, or on one the release changes, blocks unless `allowed_drift` names it; other
drift is reported; a stack never deployed is not asked."""

from __future__ import annotations

import contextlib
import io
import json
from xml.etree import ElementTree

import boto3
import pytest
from botocore.stub import ANY, Stubber

from pipeline import changes
from tests.test_config import BASE

STAGE = "Production"
ROLE = "arn:aws:iam::333333333333:role/cdk-hnb659fds-lookup-role-333333333333-us-west-2"
LAYERS = ("Network", "Data", "Platform", "Observability")
BUCKET_DRIFT = {"LogicalResourceId": "", "ResourceType": "AWS::S3::Bucket", "StackResourceDriftStatus": "MODIFIED",
                "PropertyDifferences": [{"PropertyPath": "/VersioningConfiguration/Status", "ExpectedValue": "Enabled",
                                         "ActualValue": "Suspended", "DifferenceType": "NOT_EQUAL"}]}


def _client(service: str):
    return boto3.client(service, region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")


class World:
    """What the pipeline account's session and the lookup role's session answer, in the order they are asked."""

    def __init__(self) -> None:
        self.sts, self.cloudformation = _client("sts"), _client("cloudformation")
        self.sts_stub, self.cfn_stub = Stubber(self.sts), Stubber(self.cloudformation)
        self.sts_stub.add_response("assume_role", {"Credentials": {
            "AccessKeyId": "AKIAEXAMPLEEXAMPLE12", "SecretAccessKey": "s" * 40, "SessionToken": "t",
            "Expiration": "2030-01-01T00:00:00Z"}}, {"RoleArn": ROLE, "RoleSessionName": "release-review"})

    def deployed(self, templates: dict[str, dict | None]) -> None:
        for layer in LAYERS:
            name = f"{STAGE}-{layer}"
            template = templates[layer]
            if template is None:
                self.cfn_stub.add_client_error("get_template", "ValidationError", f"Stack with id {name} does not exist",
                                               expected_params={"StackName": name, "TemplateStage": "Original"})
            else:
                self.cfn_stub.add_response("get_template", {"TemplateBody": json.dumps(template)},
                                           {"StackName": name, "TemplateStage": "Original"})

    def drift(self, results: dict[str, list[dict]]) -> None:
        """Detection started on each stack in `results` (the deployed ones), then each read back, in layer order."""
        results = {layer: results[layer] for layer in LAYERS if layer in results}
        for layer in results:
            self.cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": f"id-{layer}"},
                                       {"StackName": f"{STAGE}-{layer}"})
        for layer, drifts in results.items():
            self.cfn_stub.add_response("describe_stack_drift_detection_status", {
                "StackId": f"arn:aws:cloudformation:us-west-2:333333333333:stack/{STAGE}-{layer}/x",
                "StackDriftDetectionId": f"id-{layer}", "DetectionStatus": "DETECTION_COMPLETE",
                "StackDriftStatus": "DRIFTED" if drifts else "IN_SYNC", "Timestamp": "2026-12-03T00:00:00Z"},
                {"StackDriftDetectionId": f"id-{layer}"})
            self.cfn_stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [
                {"StackId": "x", "PhysicalResourceId": "p", "Timestamp": "2026-12-03T00:00:00Z", **drift} for drift in drifts]},
                {"StackName": f"{STAGE}-{layer}", "StackResourceDriftStatusFilters": ["MODIFIED", "DELETED"]})

    def session_factory(self, **_credentials):
        world = self

        class Session:
            def client(self, service, region_name=None):
                return {"sts": world.sts, "cloudformation": world.cloudformation}[service]

        return Session()


def review(world: World, tmp_path, *extra: str, assembly) -> tuple[int, dict, str, str]:
    out = io.StringIO()
    with world.sts_stub, world.cfn_stub, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = changes.main(["--base", "deployed", "--drift", "--assembly", str(assembly.directory), "--stage", STAGE,
                             "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                             "--junit", str(tmp_path / "r.xml"), *extra], session_factory=world.session_factory)
    try:
        world.cfn_stub.assert_no_pending_responses()
    except AssertionError as error:
        raise AssertionError(f"{error}; the review said:\n{out.getvalue()}") from None
    data = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else {}
    markdown = (tmp_path / "r.md").read_text() if (tmp_path / "r.md").exists() else ""
    return code, data, markdown, out.getvalue()


def _templates(assembly) -> dict[str, dict]:
    return {layer: assembly.stack(STAGE, layer).body for layer in LAYERS}


def _bucket(assembly) -> str:
    data = assembly.stack(STAGE, "Data")
    return next(lid for lid, r in data.resources.items() if r["Type"] == "AWS::S3::Bucket")


def test_drift_on_a_stateful_resource_blocks_and_other_drift_is_reported(assembly, tmp_path):
    world = World()
    world.deployed(_templates(assembly))
    group = next(lid for lid, r in assembly.stack(STAGE, "Network").resources.items() if r["Type"] == "AWS::EC2::SecurityGroup")
    world.drift({"Network": [{"LogicalResourceId": group, "ResourceType": "AWS::EC2::SecurityGroup",
                              "StackResourceDriftStatus": "MODIFIED", "PropertyDifferences": [
                                  {"PropertyPath": "/SecurityGroupIngress/3", "ExpectedValue": "null",
                                   "ActualValue": "{\"CidrIp\":\"0.0.0.0/0\"}", "DifferenceType": "ADD"}]}],
                 "Data": [{**BUCKET_DRIFT, "LogicalResourceId": _bucket(assembly)}], "Platform": [], "Observability": []})
    code, data, markdown, out = review(world, tmp_path, assembly=assembly)
    assert code == 1, out
    drifts = {d["logical_id"]: d for d in data["drifts"]}
    assert drifts[_bucket(assembly)]["blocking"] and drifts[_bucket(assembly)]["stateful"]
    assert drifts[group]["blocking"] is False  # reported, not blocking: neither stateful nor changed by the release
    assert drifts[group]["properties"] == ["/SecurityGroupIngress/3 (ADD)"]
    assert data["summary"]["drifted"] == 2 and data["summary"]["blocking"] == 1
    assert f"{STAGE}-Data/{_bucket(assembly)} (drift)" in out
    assert "## Drift" in markdown and "**blocking**: stateful" in markdown and "| reported |" in markdown
    assert "Suspended" not in markdown + json.dumps(data) + out  # property paths, never values
    failures = [c for c in ElementTree.parse(tmp_path / "r.xml").iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == [f"{_bucket(assembly)} (AWS::S3::Bucket)"]


def test_drift_on_a_resource_the_release_changes_blocks(assembly, tmp_path):
    templates = _templates(assembly)
    platform = json.loads(json.dumps(templates["Platform"]))
    balancer = next(lid for lid, r in platform["Resources"].items() if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer")
    for attribute in platform["Resources"][balancer]["Properties"]["LoadBalancerAttributes"]:
        if attribute["Key"] == "idle_timeout.timeout_seconds":
            attribute["Value"] = "300"  # deployed before this release
    world = World()
    world.deployed({**templates, "Platform": platform})
    world.drift({"Network": [], "Data": [], "Observability": [], "Platform": [{
        "LogicalResourceId": balancer, "ResourceType": "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "StackResourceDriftStatus": "MODIFIED", "PropertyDifferences": [
            {"PropertyPath": "/LoadBalancerAttributes/2/Value", "ExpectedValue": "300", "ActualValue": "120",
             "DifferenceType": "NOT_EQUAL"}]}]})
    code, data, markdown, out = review(world, tmp_path, assembly=assembly)
    assert code == 1, out
    (drift,) = data["drifts"]
    assert drift["changed"] and drift["blocking"] and not drift["stateful"]
    assert "**blocking**: this release changes it" in markdown


def test_allowed_drift_passes_and_an_allowance_without_drift_is_reported(assembly, tmp_path):
    bucket = _bucket(assembly)
    config = tmp_path / "allowed.toml"
    config.write_text(BASE + f'\n[[environments.allowed_drift]]\nstack = "Data"\nlogical_id = "{bucket}"\n'
                      'reason = "versioning suspended by hand during the restore test (change 4712); the deploy restores it"\n'
                      '\n[[environments.allowed_drift]]\nstack = "Data"\nlogical_id = "Postgres9DC8BB04"\n'
                      'reason = "a parameter changed by hand last month (change 4700), since put back"\n')
    world = World()
    world.deployed(_templates(assembly))
    world.drift({"Network": [], "Data": [{**BUCKET_DRIFT, "LogicalResourceId": bucket}], "Platform": [], "Observability": []})
    code, data, markdown, out = review(world, tmp_path, "--config", str(config), assembly=assembly)
    assert code == 0, out
    (drift,) = data["drifts"]
    assert drift["allowed"].startswith("versioning suspended by hand") and not drift["blocking"]
    assert data["unused_allowances"] == ["production: Data/Postgres9DC8BB04 has no drift: remove the allowed_drift entry"]
    assert "allowed: versioning suspended by hand" in markdown


def test_a_stack_never_deployed_is_not_asked_for_drift(assembly, tmp_path):
    world = World()
    templates = _templates(assembly)
    world.deployed({**templates, "Observability": None})
    world.drift({"Network": [], "Data": [], "Platform": []})  # Stubber refuses any call not queued here
    code, data, markdown, out = review(world, tmp_path, assembly=assembly)
    assert code == 0, out
    assert data["drifts"] == [] and "No deployed resource has drifted." in markdown
    assert ", 0 drifted, blocking: none" in out


def test_drift_needs_the_deployed_base(assembly):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = changes.main(["--base", str(assembly.directory), "--drift", "--assembly", str(assembly.directory)])
    assert code == 2 and "--drift compares what runs with what is deployed" in err.getvalue()


# --- detect_drift itself: waiting, incomplete detections, pages ----------------------------------------------------


def _stack(layer: str = "Data") -> changes.StackTemplate:
    return changes.StackTemplate(STAGE, f"{STAGE}-{layer}", "333333333333", "us-west-2", {"Resources": {}}, ROLE)


def _status(state: str, **extra) -> dict:
    return {"StackId": "x", "StackDriftDetectionId": "d", "DetectionStatus": state, "Timestamp": "2026-12-03T00:00:00Z",
            **extra}


def test_detection_waits_reads_every_page_and_notes_an_incomplete_detection():
    client = _client("cloudformation")
    stub = Stubber(client)
    stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d"}, {"StackName": "Production-Data"})
    stub.add_response("describe_stack_drift_detection_status", _status("DETECTION_IN_PROGRESS"), {"StackDriftDetectionId": "d"})
    stub.add_response("describe_stack_drift_detection_status", _status(
        "DETECTION_FAILED", StackDriftStatus="DRIFTED", DetectionStatusReason="Failed to detect drift on resource [Key]"),
        {"StackDriftDetectionId": "d"})
    page = {"StackId": "x", "PhysicalResourceId": "p", "Timestamp": "2026-12-03T00:00:00Z", "StackResourceDriftStatus": "DELETED"}
    stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [
        {**page, "LogicalResourceId": "A", "ResourceType": "AWS::SNS::Topic"}], "NextToken": "more"},
        {"StackName": "Production-Data", "StackResourceDriftStatusFilters": ANY})
    stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [
        {**page, "LogicalResourceId": "B", "ResourceType": "AWS::DynamoDB::Table"}]},
        {"StackName": "Production-Data", "StackResourceDriftStatusFilters": ANY, "NextToken": "more"})
    slept = []
    with stub:
        drifts, notes = changes.detect_drift([(_stack(), client)], poll_seconds=5, sleep=slept.append)
    assert slept == [5]
    assert [(d.logical_id, d.status, d.stateful) for d in drifts] == [("A", "DELETED", False), ("B", "DELETED", True)]
    assert notes == ["Production-Data: Failed to detect drift on resource [Key]"]


def test_a_detection_that_never_ends_stops_the_review_with_one_line():
    client = _client("cloudformation")
    stub = Stubber(client)
    stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d"}, {"StackName": "Production-Data"})
    for _ in range(3):
        stub.add_response("describe_stack_drift_detection_status", _status("DETECTION_IN_PROGRESS"),
                          {"StackDriftDetectionId": "d"})
    now = iter([0, 0, 400, 1000])
    with stub, pytest.raises(changes.ReviewError, match=r"Production-Data: drift detection still running after 900 s"):
        changes.detect_drift([(_stack(), client)], sleep=lambda _s: None, clock=lambda: next(now))


def test_a_lookup_role_that_may_not_detect_drift_is_named():
    client = _client("cloudformation")
    stub = Stubber(client)
    stub.add_client_error("detect_stack_drift", "AccessDenied", "not authorized to perform: cloudformation:DetectStackDrift")
    with stub, pytest.raises(changes.ReviewError, match=r"Production-Data in 333333333333/us-west-2 through .*lookup-role.*"
                                                        r"AccessDenied"):
        changes.detect_drift([(_stack(), client)])
