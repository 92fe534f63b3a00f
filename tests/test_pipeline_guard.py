"""The pipeline guard between Synth and UpdatePipeline: on pairs of pipeline templates (the synthesized one, edited as a
commit could), what counts as widening the pipeline's own rights, the allowance by fingerprint, and the Lambda's job
results with botocore's Stubber answering for S3, CloudFormation and CodePipeline; its place in the pipeline."""

from __future__ import annotations

import copy
import io
import json
import zipfile

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from tests.lambdas import load_handler

handler_module = load_handler("pipeline_guard")
widening = load_handler("pipeline_guard", "widening")


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


@pytest.fixture
def deployed(pipeline) -> dict:
    return copy.deepcopy(pipeline.body)


def _guard_ids(template: dict) -> tuple[str, ...]:
    function = next(r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                    and "GUARD_LOGICAL_IDS" in r["Properties"].get("Environment", {}).get("Variables", {}))
    return tuple(function["Properties"]["Environment"]["Variables"]["GUARD_LOGICAL_IDS"].split(","))


def _stages(template: dict) -> list[dict]:
    (resource,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    return resource["Properties"]["Stages"]


def _role_policy(template: dict, role_fragment: str) -> dict:
    return next(r["Properties"]["PolicyDocument"] for lid, r in template["Resources"].items()
                if r["Type"] == "AWS::IAM::Policy" and role_fragment in lid)


def test_the_same_template_passes(deployed):
    assert widening.decide(deployed, copy.deepcopy(deployed), _guard_ids(deployed)) == (
        True, "the release does not widen what the pipeline may do")


def test_the_first_deploy_passes(deployed):
    assert widening.decide(None, deployed)[0] is True


def _edits():
    def statement(template):
        _role_policy(template, "ReviewProduction")["Statement"].append(
            {"Action": "iam:*", "Effect": "Allow", "Resource": "*"})

    def trust(template):
        role = next(r for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role" and "SmokeTestsProduction" in lid)
        role["Properties"]["AssumeRolePolicyDocument"]["Statement"].append(
            {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999999999999:root"}})

    def approval(template):
        for stage in _stages(template):
            stage["Actions"] = [a for a in stage["Actions"] if a["ActionTypeId"]["Category"] != "Approval"]

    def gate(template):
        for stage in _stages(template):
            stage.pop("BeforeEntry", None)

    def guard_code(template):
        function = template["Resources"][_guard_ids(template)[0]]
        function["Properties"]["Code"]["S3Key"] = "0" * 64 + ".zip"

    def guard_action(template):
        build = next(s for s in _stages(template) if s["Name"] == "Build")
        build["Actions"] = [a for a in build["Actions"] if a["Name"] != "PipelineGuard"]

    def new_step(template):
        build = next(s for s in _stages(template) if s["Name"] == "Build")
        build["Actions"].append({**build["Actions"][0], "Name": "Extra", "RunOrder": 3})

    def new_role(template):
        template["Resources"]["Sneaky"] = {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
            "Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}}]},
            "ManagedPolicyArns": ["arn:aws:iam::aws:policy/AdministratorAccess"]}}

    return {
        "statement": (statement, '"Action":"iam:*"'),
        "trust": (trust, "AssumeRolePolicyDocument"),
        "approval": (approval, "approval removed: Production/PromoteToProduction"),
        "gate": (gate, "gate changed or removed: stage Production BeforeEntry"),
        "guard code": (guard_code, "the pipeline guard changes: PipelineGuard"),
        "guard action": (guard_action, "the pipeline guard changes: action Build/PipelineGuard"),
        "new step": (new_step, "new action Build/Extra (Build)"),
        "new role": (new_role, "new role Sneaky"),
    }


@pytest.mark.parametrize("name", list(_edits()))
def test_a_widening_stops_before_update_pipeline_and_says_what(deployed, name):
    edit, shown = _edits()[name]
    new = copy.deepcopy(deployed)
    edit(new)
    passed, message = widening.decide(deployed, new, _guard_ids(deployed))
    assert passed is False, message
    assert shown in message
    rows = widening.widening(deployed, new, _guard_ids(deployed))
    assert f"fingerprint {widening.fingerprint(rows)}" in message and "[[pipeline.allowed_widening]]" in message


def test_narrowing_passes(deployed):
    new = copy.deepcopy(deployed)
    _role_policy(new, "ReviewProduction")["Statement"].pop()
    assert widening.decide(deployed, new, _guard_ids(deployed))[0] is True


def test_a_gate_added_is_no_widening(deployed):
    older = copy.deepcopy(deployed)
    for stage in _stages(older):
        stage.pop("BeforeEntry", None)  # deployed before production had its window; its rollback stays
    assert widening.decide(older, copy.deepcopy(deployed), _guard_ids(deployed))[0] is True


def test_an_allowance_for_exactly_that_widening_lets_it_through(deployed):
    edit, _ = _edits()["statement"]
    new = copy.deepcopy(deployed)
    edit(new)
    mark = widening.fingerprint(widening.widening(deployed, new, _guard_ids(deployed)))
    reason = "the review step reads IAM for the new access report (change 4801)"
    new["Metadata"]["PipelineGuard"]["AllowedWidening"] = [{"fingerprint": "0123456789abcdef", "reason": "another one"}]
    assert widening.decide(deployed, new, _guard_ids(deployed))[0] is False  # a fingerprint of another widening
    new["Metadata"]["PipelineGuard"]["AllowedWidening"].append({"fingerprint": mark, "reason": reason})
    passed, message = widening.decide(deployed, new, _guard_ids(deployed))
    assert passed and f"allowed ({mark}: {reason})" in message


# --- the Lambda's job ---------------------------------------------------------------------------------------------

JOB = {"CodePipeline.job": {"id": "11111111-2222-3333-4444-555555555555", "data": {
    "inputArtifacts": [{"location": {"s3Location": {"bucketName": "artifacts", "objectKey": "Synth_Output/abc"}}}],
    "artifactCredentials": {"accessKeyId": "AKIAEXAMPLEEXAMPLE12", "secretAccessKey": "s" * 40, "sessionToken": "t"}}}}


def _client(service: str):
    session = boto3.session.Session(region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")
    return session.client(service)


def _run(monkeypatch, new: dict, deployed_template: dict | None, expect_success: bool, message_part: str = ""):
    monkeypatch.setenv("STACK_NAME", "CoderPipeline")
    monkeypatch.setenv("TEMPLATE_FILE", "CoderPipeline.template.json")
    monkeypatch.setenv("GUARD_LOGICAL_IDS", ",".join(_guard_ids(new)))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("CoderPipeline.template.json", json.dumps(new))
    s3, cloudformation, codepipeline = _client("s3"), _client("cloudformation"), _client("codepipeline")
    stubs = [Stubber(s3), Stubber(cloudformation), Stubber(codepipeline)]
    data = archive.getvalue()
    stubs[0].add_response("get_object", {"Body": StreamingBody(io.BytesIO(data), len(data))},
                          {"Bucket": "artifacts", "Key": "Synth_Output/abc"})
    if deployed_template is None:
        stubs[1].add_client_error("get_template", "ValidationError", "Stack with id CoderPipeline does not exist")
    elif deployed_template == "denied":
        stubs[1].add_client_error("get_template", "AccessDenied", "not authorized to perform: cloudformation:GetTemplate")
    else:
        stubs[1].add_response("get_template", {"TemplateBody": json.dumps(deployed_template)},
                              {"StackName": "CoderPipeline", "TemplateStage": "Original"})
    job_id = JOB["CodePipeline.job"]["id"]
    if expect_success:
        stubs[2].add_response("put_job_success_result", {}, {"jobId": job_id})
    else:
        stubs[2].add_response("put_job_failure_result", {}, {"jobId": job_id, "failureDetails": ANY})
    monkeypatch.setattr(handler_module.boto3, "client", lambda service, **_kw: s3)
    sent = {}
    original = codepipeline.put_job_failure_result

    def record(**kwargs):
        sent.update(kwargs)
        return original(**kwargs)

    codepipeline.put_job_failure_result = record
    for stub in stubs:
        stub.activate()
    result = handler_module.handler(JOB, None, codepipeline=codepipeline, cloudformation=cloudformation)
    for stub in stubs:
        stub.assert_no_pending_responses()
    assert result == {"passed": expect_success}
    if not expect_success:
        assert sent["failureDetails"]["type"] == "JobFailed" and message_part in sent["failureDetails"]["message"]
    return sent


def test_the_action_passes_a_release_that_widens_nothing(monkeypatch, deployed):
    _run(monkeypatch, copy.deepcopy(deployed), deployed, expect_success=True)


def test_the_action_fails_a_widening_with_its_rows(monkeypatch, deployed):
    new = copy.deepcopy(deployed)
    _edits()["approval"][0](new)
    _run(monkeypatch, new, deployed, expect_success=False, message_part="approval removed: Production/PromoteToProduction")


def test_the_action_passes_the_first_deploy_and_fails_closed_when_it_cannot_read(monkeypatch, deployed):
    _run(monkeypatch, copy.deepcopy(deployed), None, expect_success=True)
    _run(monkeypatch, copy.deepcopy(deployed), "denied", expect_success=False,
         message_part="the pipeline guard could not decide: ClientError")


# --- its place in the pipeline --------------------------------------------------------------------------------


def test_the_guard_runs_after_synth_before_update_pipeline_on_the_synth_output(pipeline):
    stages = _stages(pipeline.body)
    names = [s["Name"] for s in stages]
    assert names.index("Build") + 1 == names.index("UpdatePipeline")
    build = next(s for s in stages if s["Name"] == "Build")
    synth, guard = sorted(build["Actions"], key=lambda a: a["RunOrder"])
    assert (synth["RunOrder"], guard["RunOrder"]) == (1, 2) and guard["Name"] == "PipelineGuard"
    assert guard["ActionTypeId"] == {"Category": "Invoke", "Owner": "AWS", "Provider": "Lambda", "Version": "1"}
    assert guard["InputArtifacts"] == synth["OutputArtifacts"]
    function_id = _guard_ids(pipeline.body)[0]
    assert guard["Configuration"]["FunctionName"] == {"Ref": function_id}
    variables = pipeline.resources[function_id]["Properties"]["Environment"]["Variables"]
    assert variables["STACK_NAME"] == "CoderPipeline" and variables["TEMPLATE_FILE"] == "CoderPipeline.template.json"
    assert pipeline.body["Metadata"]["PipelineGuard"] == {"AllowedWidening": []}  # the shipped config allows none


def test_the_guard_reads_only_its_own_stack(pipeline):
    function_id = _guard_ids(pipeline.body)[0]
    role_id = pipeline.resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = [s for p in pipeline.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]
                  for s in p["PolicyDocument"]["Statement"]]
    (read,) = [s for s in statements if s.get("Sid") == "ReadThePipelineStack"]
    assert read["Action"] == "cloudformation:GetTemplate"
    assert read["Resource"] == "arn:aws:cloudformation:us-west-2:111111111111:stack/CoderPipeline/*"
    actions = sorted({a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])})
    assert actions == ["cloudformation:GetTemplate", "codepipeline:PutJobFailureResult", "codepipeline:PutJobSuccessResult"]
