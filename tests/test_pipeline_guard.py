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

    def attach(template):  # the self-mutation role's policy applied to the Synth step's role as well
        policy = next(r for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Policy" and "SelfMutation" in lid)
        policy["Properties"]["Roles"].append({"Ref": "PipelineBuildSynthCdkBuildProjectRole231EEA2A"})

    def swap_role(template):  # the Synth step runs as the self-mutation role
        project = next(r for lid, r in template["Resources"].items() if lid.startswith("PipelineBuildSynthCdkBuildProject")
                       and r["Type"] == "AWS::CodeBuild::Project")
        project["Properties"]["ServiceRole"] = {"Fn::GetAtt": ["PipelineUpdatePipelineSelfMutationRole57E559E8", "Arn"]}

    def self_mutation_commands(template):
        project = next(r for lid, r in template["Resources"].items() if "SelfMutation" in lid and r["Type"] == "AWS::CodeBuild::Project")
        project["Properties"]["Source"]["BuildSpec"] = json.dumps({"version": "0.2", "phases": {"build": {"commands": ["curl x | sh"]}}})

    def approval_after_deploys(template):
        for stage in _stages(template):
            for action in stage["Actions"]:
                if action["ActionTypeId"]["Category"] == "Approval":
                    action["RunOrder"] = 12

    def reorder(template):
        resource = next(r for r in template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline")
        stages = resource["Properties"]["Stages"]
        names = [s["Name"] for s in stages]
        staging, production = names.index("Staging"), names.index("Production")
        stages[staging], stages[production] = stages[production], stages[staging]

    def permission(template):
        template["Resources"]["OpenGuard"] = {"Type": "AWS::Lambda::Permission", "Properties": {
            "Action": "lambda:InvokeFunction", "FunctionName": {"Ref": _guard_ids(template)[0]}, "Principal": "*"}}

    def parameter(template):
        template["Resources"]["Allowance"] = {"Type": "AWS::SSM::Parameter", "Properties": {
            "Name": "/coder-pipeline/allowed-widening/0123456789abcdef", "Type": "String", "Value": "x" * 30}}

    return {
        "attach": (attach, "now applies to"),
        "swap role": (swap_role, "acts with another role: ServiceRole"),
        "self-mutation commands": (self_mutation_commands, "the self-mutation step changes what it runs"),
        "approval after deploys": (approval_after_deploys, "action Production/PromoteToProduction changes RunOrder"),
        "reorder": (reorder, "reorders its stages"),
        "permission": (permission, "new resource type AWS::Lambda::Permission: OpenGuard"),
        "parameter": (parameter, "new resource type AWS::SSM::Parameter: Allowance"),
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
    assert f"fingerprint {widening.fingerprint(rows)}" in message and "A person who has reviewed it allows" in message


def test_narrowing_passes(deployed):
    new = copy.deepcopy(deployed)
    _role_policy(new, "ReviewProduction")["Statement"].pop()
    assert widening.decide(deployed, new, _guard_ids(deployed))[0] is True


def test_a_gate_added_is_no_widening(deployed):
    older = copy.deepcopy(deployed)
    for stage in _stages(older):
        stage.pop("BeforeEntry", None)  # deployed before production had its window; its rollback stays
    assert widening.decide(older, copy.deepcopy(deployed), _guard_ids(deployed))[0] is True


def test_a_persons_allowance_for_exactly_that_widening_lets_it_through(deployed):
    edit, _ = _edits()["statement"]
    new = copy.deepcopy(deployed)
    edit(new)
    mark = widening.fingerprint(widening.widening(deployed, new, _guard_ids(deployed)))
    reason = "the review step reads IAM for the new access report (change 4801)"
    allowances = {"0123456789abcdef": "another widening, allowed last week"}
    assert widening.decide(deployed, new, _guard_ids(deployed), allowances.get)[0] is False
    allowances[mark] = reason
    passed, message = widening.decide(deployed, new, _guard_ids(deployed), allowances.get)
    assert passed and f"allowed by a person ({mark}: {reason})" in message


# --- the Lambda's job ---------------------------------------------------------------------------------------------

JOB = {"CodePipeline.job": {"id": "11111111-2222-3333-4444-555555555555", "data": {}}}
JOB_DATA = {
    "pipelineContext": {"pipelineName": "coder-platform", "stage": {"name": "Build"}, "action": {"name": "PipelineGuard"}},
    "inputArtifacts": [{"location": {"type": "S3", "s3Location": {"bucketName": "artifacts", "objectKey": "Synth_Output/abc"}}}],
    "artifactCredentials": {"accessKeyId": "AKIAEXAMPLEEXAMPLE12", "secretAccessKey": "s" * 40, "sessionToken": "t"}}


def _client(service: str):
    session = boto3.session.Session(region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")
    return session.client(service)


def _assembly_zip(template: dict, manifest_edit=None) -> bytes:
    manifest = {"version": "x", "artifacts": {
        "CoderPipeline.assets": {"type": "cdk:asset-manifest", "properties": {"file": "CoderPipeline.assets.json"}},
        "CoderPipeline": {"type": "aws:cloudformation:stack", "environment": "aws://111111111111/us-west-2",
                          "properties": {"templateFile": "CoderPipeline.template.json", "stackName": "CoderPipeline"},
                          "dependencies": ["CoderPipeline.assets"]}}}
    if manifest_edit:
        manifest_edit(manifest)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("manifest.json", json.dumps(manifest))
        zipped.writestr("CoderPipeline.template.json", json.dumps(template))
        zipped.writestr("Other.template.json", json.dumps({"Resources": {}}))
    return archive.getvalue()


def _expect_result(stub, codepipeline, job_id: str, expect_success: bool) -> dict:
    """The job result the guard must report; on failure, what it sent (filled when it reports)."""
    sent: dict = {}
    if expect_success:
        stub.add_response("put_job_success_result", {}, {"jobId": job_id})
        return sent
    stub.add_response("put_job_failure_result", {}, {"jobId": job_id, "failureDetails": ANY})
    original = codepipeline.put_job_failure_result

    def record(**kwargs):
        sent.update(kwargs)
        return original(**kwargs)

    codepipeline.put_job_failure_result = record
    return sent


def _run(monkeypatch, new: dict, deployed_template, expect_success: bool, message_part: str = "", *,
         manifest_edit=None, job_data=JOB_DATA, allowance: str | None = None):
    monkeypatch.setenv("STACK_NAME", "CoderPipeline")
    monkeypatch.setenv("TEMPLATE_FILE", "CoderPipeline.template.json")
    monkeypatch.setenv("PIPELINE_NAME", "coder-platform")
    monkeypatch.setenv("ALLOWANCE_PATH", "/coder-pipeline/allowed-widening/")
    monkeypatch.setenv("GUARD_LOGICAL_IDS", ",".join(_guard_ids(new)))
    s3, cloudformation, codepipeline, ssm = (_client(name) for name in ("s3", "cloudformation", "codepipeline", "ssm"))
    stubs = {name: Stubber(client) for name, client in
             (("s3", s3), ("cloudformation", cloudformation), ("codepipeline", codepipeline), ("ssm", ssm))}
    job_id = JOB["CodePipeline.job"]["id"]
    stubs["codepipeline"].add_response("get_job_details", {"jobDetails": {"id": job_id, "data": job_data}},
                                       {"jobId": job_id})
    data = _assembly_zip(new, manifest_edit)
    if job_data is JOB_DATA:
        stubs["s3"].add_response("get_object", {"Body": StreamingBody(io.BytesIO(data), len(data))},
                                 {"Bucket": "artifacts", "Key": "Synth_Output/abc"})
    refused = manifest_edit is not None or job_data is not JOB_DATA
    if not refused:
        if deployed_template is None:
            stubs["cloudformation"].add_client_error("get_template", "ValidationError", "Stack with id CoderPipeline does not exist")
        elif deployed_template == "denied":
            stubs["cloudformation"].add_client_error("get_template", "AccessDenied", "not authorized to perform: GetTemplate")
        else:
            stubs["cloudformation"].add_response("get_template", {"TemplateBody": json.dumps(deployed_template)},
                                                 {"StackName": "CoderPipeline", "TemplateStage": "Original"})
            rows = widening.widening(deployed_template, new, _guard_ids(new))
            if rows:
                name = f"/coder-pipeline/allowed-widening/{widening.fingerprint(rows)}"
                if allowance is None:
                    stubs["ssm"].add_client_error("get_parameter", "ParameterNotFound", "no", expected_params={"Name": name})
                else:
                    stubs["ssm"].add_response("get_parameter", {"Parameter": {"Name": name, "Value": allowance}}, {"Name": name})
    sent = _expect_result(stubs["codepipeline"], codepipeline, job_id, expect_success)
    monkeypatch.setattr(handler_module.boto3, "client", lambda service, **_kw: s3)
    for stub in stubs.values():
        stub.activate()
    result = handler_module.handler(JOB, None, codepipeline=codepipeline, cloudformation=cloudformation, ssm=ssm)
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    assert result == {"passed": expect_success}
    if not expect_success:
        assert sent["failureDetails"]["type"] == "JobFailed" and message_part in sent["failureDetails"]["message"], sent
    return sent


def test_the_action_passes_a_release_that_widens_nothing(monkeypatch, deployed):
    _run(monkeypatch, copy.deepcopy(deployed), deployed, expect_success=True)


def test_the_action_fails_a_widening_with_its_rows_until_a_person_allows_it(monkeypatch, deployed):
    new = copy.deepcopy(deployed)
    _edits()["approval"][0](new)
    _run(monkeypatch, new, deployed, expect_success=False, message_part="approval removed: Production/PromoteToProduction")
    _run(monkeypatch, new, deployed, expect_success=False, message_part="approval removed",
         allowance="ok")  # a reason too short to be one
    _run(monkeypatch, new, deployed, expect_success=True,
         allowance="production approvals move to the change board's own pipeline (change 4900)")


def test_the_action_passes_the_first_deploy_and_fails_closed_when_it_cannot_read(monkeypatch, deployed):
    _run(monkeypatch, copy.deepcopy(deployed), None, expect_success=True)
    _run(monkeypatch, copy.deepcopy(deployed), "denied", expect_success=False,
         message_part="the pipeline guard could not decide: ClientError")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["artifacts"]["CoderPipeline"]["properties"].update(templateFile="Other.template.json"),
     "CoderPipeline would deploy 'Other.template.json', not CoderPipeline.template.json"),
    (lambda m: (m["artifacts"].update(Other={"type": "aws:cloudformation:stack", "properties": {
        "templateFile": "Other.template.json", "stackName": "Other"}}),
                m["artifacts"]["CoderPipeline"]["dependencies"].append("Other")),
     "CoderPipeline would deploy Other along with it"),
])
def test_an_assembly_that_would_deploy_something_else_is_refused(monkeypatch, deployed, edit, message):
    _run(monkeypatch, copy.deepcopy(deployed), deployed, expect_success=False, message_part=message, manifest_edit=edit)


def test_a_job_of_another_pipeline_or_action_is_refused(monkeypatch, deployed):
    other = {**JOB_DATA, "pipelineContext": {"pipelineName": "someone-elses", "action": {"name": "PipelineGuard"}}}
    _run(monkeypatch, copy.deepcopy(deployed), deployed, expect_success=False,
         message_part="is not this pipeline's guard action", job_data=other)


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
    assert variables["PIPELINE_NAME"] == "coder-platform"
    assert variables["ALLOWANCE_PATH"] == "/coder-pipeline/allowed-widening/"


def test_the_guard_reads_only_its_own_stack(pipeline):
    function_id = _guard_ids(pipeline.body)[0]
    role_id = pipeline.resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = [s for p in pipeline.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]
                  for s in p["PolicyDocument"]["Statement"]]
    (read,) = [s for s in statements if s.get("Sid") == "ReadThePipelineStack"]
    assert read["Action"] == "cloudformation:GetTemplate"
    assert read["Resource"] == "arn:aws:cloudformation:us-west-2:111111111111:stack/CoderPipeline/*"
    (allowances,) = [s for s in statements if s.get("Sid") == "ReadAllowances"]
    assert allowances["Action"] == "ssm:GetParameter"
    assert allowances["Resource"] == "arn:aws:ssm:us-west-2:111111111111:parameter/coder-pipeline/allowed-widening/*"
    actions = sorted({a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])})
    assert actions == ["cloudformation:GetTemplate", "codepipeline:GetJobDetails", "codepipeline:PutJobFailureResult",
                       "codepipeline:PutJobSuccessResult", "ssm:GetParameter"]


def test_no_role_of_the_pipeline_may_write_an_allowance(pipeline):
    """Only a person puts one: no statement of the pipeline's own roles names ssm:PutParameter (or ssm:*), and the
    pipeline account's execution policies (what self-mutation deploys with) hold none either."""
    for policy in pipeline.props("AWS::IAM::Policy"):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            assert not [a for a in actions if a in ("ssm:PutParameter", "ssm:*", "*")], statement
    from pipeline.execution_policy import DIRECTORY
    granted = {a for path in DIRECTORY.glob("pipeline-*.json") for a in json.loads(path.read_text())["Statement"][0]["Action"]}
    assert "ssm:PutParameter" not in granted


# --- an environment in another region: CDK's support stack, deployed along with the pipeline -----------------------

SUPPORT = "CoderPipeline-support-eu-central-1"


def _support_zip(assembly) -> bytes:
    """The three-environment example's Synth output as CodePipeline hands it over: manifest and templates."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in assembly.directory.glob("*.json"):
            zipped.write(path, path.name)
    return archive.getvalue()


def _run_cross_region(monkeypatch, assembly, deployed_support, expect_success: bool, message_part: str = "", *,
                      known: str | None = None) -> None:
    """The guard's handler on the real three-environment assembly: the pipeline stack read in us-west-2, the support
    stack in eu-central-1 (`deployed_support`: its deployed template, or None when the deployed release knows none)."""
    pipeline = assembly.templates["CoderPipeline"].body
    function = next(r["Properties"] for r in pipeline["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                    and "SUPPORT_STACKS" in r["Properties"].get("Environment", {}).get("Variables", {}))
    variables = function["Environment"]["Variables"]
    for name in ("STACK_NAME", "TEMPLATE_FILE", "PIPELINE_NAME", "ALLOWANCE_PATH", "GUARD_LOGICAL_IDS"):
        monkeypatch.setenv(name, variables[name])
    monkeypatch.setenv("SUPPORT_STACKS", variables["SUPPORT_STACKS"] if known is None else known)
    s3, cloudformation, codepipeline, ssm = (_client(name) for name in ("s3", "cloudformation", "codepipeline", "ssm"))
    regional = boto3.session.Session(region_name="eu-central-1", aws_access_key_id="testing",
                                     aws_secret_access_key="testing").client("cloudformation")
    stubs = {client: Stubber(client) for client in (s3, cloudformation, codepipeline, ssm, regional)}
    job_id = JOB["CodePipeline.job"]["id"]
    stubs[codepipeline].add_response("get_job_details", {"jobDetails": {"id": job_id, "data": JOB_DATA}}, {"jobId": job_id})
    data = _support_zip(assembly)
    stubs[s3].add_response("get_object", {"Body": StreamingBody(io.BytesIO(data), len(data))},
                           {"Bucket": "artifacts", "Key": "Synth_Output/abc"})
    stubs[cloudformation].add_response("get_template", {"TemplateBody": json.dumps(pipeline)},
                                       {"StackName": "CoderPipeline", "TemplateStage": "Original"})
    if known is None:
        stubs[regional].add_response("get_template", {"TemplateBody": json.dumps(deployed_support)},
                                     {"StackName": SUPPORT, "TemplateStage": "Original"})
    new_support = assembly.templates[SUPPORT].body
    rows = widening.support_rows({SUPPORT: (deployed_support if known is None else None, new_support)})
    if rows:
        name = f"/coder-pipeline/allowed-widening/{widening.fingerprint(rows)}"
        stubs[ssm].add_client_error("get_parameter", "ParameterNotFound", "no", expected_params={"Name": name})
    sent = _expect_result(stubs[codepipeline], codepipeline, job_id, expect_success)
    monkeypatch.setattr(handler_module.boto3, "client", lambda service, **_kw: s3)
    for stub in stubs.values():
        stub.activate()
    regions = []

    def cloudformation_in(region):
        regions.append(region)
        return regional

    result = handler_module.handler(JOB, None, codepipeline=codepipeline, cloudformation=cloudformation, ssm=ssm,
                                    cloudformation_in=cloudformation_in)
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    assert result == {"passed": expect_success}, sent
    assert regions == ([] if known is not None else ["eu-central-1"])
    if not expect_success:
        assert message_part in sent["failureDetails"]["message"], sent


def test_the_support_stack_of_another_region_is_compared_in_its_region(monkeypatch, three_environments):
    """The same release passes (the support stack read in eu-central-1); a statement added to the support key's
    policy stops it, shown under the support stack's name; a support stack the deployed release does not know (a
    region added) is new, and everything in it shows."""
    support = three_environments.templates[SUPPORT].body
    _run_cross_region(monkeypatch, three_environments, copy.deepcopy(support), expect_success=True)
    widened = copy.deepcopy(support)
    deployed = copy.deepcopy(support)
    for resource in deployed["Resources"].values():
        if resource["Type"] == "AWS::KMS::Key":
            resource["Properties"]["KeyPolicy"]["Statement"].pop()  # the deployed key named fewer principals
    _run_cross_region(monkeypatch, three_environments, deployed, expect_success=False,
                      message_part=f"{SUPPORT}: + CrossRegionCodePipelineReplicationBucketEncryptionKey")
    _run_cross_region(monkeypatch, three_environments, widened, expect_success=False,
                      message_part=f"new stack {SUPPORT} deployed with the pipeline", known="")


def _refusal(directory, edit) -> str:
    """What the guard says of the assembly in `directory` after `edit(manifest, files)` (files: name -> JSON)."""
    raw = {path.name: path.read_bytes() for path in directory.glob("*.json")}
    files = {name: json.loads(body) for name, body in raw.items()}
    edit(files["manifest.json"], files)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, content in files.items():  # the bytes as synthesized, unless the edit changed the file
            zipped.writestr(name, raw[name] if name in raw and json.loads(raw[name]) == content else json.dumps(content))
    with zipfile.ZipFile(io.BytesIO(archive.getvalue())) as zipped:
        try:
            handler_module._stacks_to_deploy(zipped)
        except handler_module.Refused as refused:
            return str(refused)
    return ""


def _support(manifest) -> dict:
    (support,) = [a for a in manifest["artifacts"].values() if a.get("properties", {}).get("stackName") == SUPPORT]
    return support


def _pipeline_artifact(manifest) -> dict:
    return manifest["artifacts"]["CoderPipeline"]


def _second_support(manifest, files):
    """Another artifact under the support stack's name, with a role in it: the CLI deploys both."""
    evil = json.loads(json.dumps(_support(manifest)))
    evil["properties"]["templateFile"] = "evil.template.json"
    files["evil.template.json"] = {"Resources": {"Admin": {"Type": "AWS::IAM::Role", "DeletionPolicy": "Retain", "Properties": {
        "AssumeRolePolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"AWS": "arn:aws:iam::999999999999:root"}}]}}}}}
    manifest["artifacts"]["evil"] = evil
    _pipeline_artifact(manifest)["dependencies"].append("evil")


def _template_asset_elsewhere(manifest, files):
    """The asset manifest publishes another file under the compared template's object key."""
    assets = files["CoderPipeline.assets.json"]["files"]
    key = next(k for k, a in assets.items() if a["source"]["path"] == "CoderPipeline.template.json")
    assets[key]["source"]["path"] = "evil.template.json"
    files["evil.template.json"] = {"Resources": {}}


def _another_artifact_named_like_it(manifest, files):
    """`cdk deploy CoderPipeline` selects by id: the artifact the guard would read must be that one."""
    other = json.loads(json.dumps(_pipeline_artifact(manifest)))
    manifest["artifacts"]["Decoy"] = other
    _pipeline_artifact(manifest)["properties"]["stackName"] = "Something"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m, _f: _support(m).update(environment="aws://999999999999/eu-central-1"), "along with it"),
    (lambda m, _f: _support(m)["properties"].update(stackName="Something-else"), "along with it"),
    (lambda m, _f: _support(m).update(environment="aws://111111111111/us-west-2"), "along with it"),
    (_second_support, f"would deploy {SUPPORT} twice"),
    (lambda m, _f: _support(m)["properties"].update(stackTemplateAssetObjectUrl="s3://cdk-assets/x.json"),
     "is not deployed as a CDK support stack is: stackTemplateAssetObjectUrl"),
    (lambda m, _f: _support(m)["properties"].update(parameters={"A": "b"}), "is not deployed as a CDK support stack is"),
    (lambda m, _f: _support(m)["properties"].update(assumeRoleArn="arn:aws:iam::111111111111:role/other"),
     "is not deployed as a CDK support stack is: assumeRoleArn"),
    (lambda m, _f: _support(m).update(dependencies=["CoderPipeline.assets"]), "would deploy something along with it"),
    (_template_asset_elsewhere, "is not published from CoderPipeline.template.json alone"),
    (lambda m, _f: _pipeline_artifact(m)["properties"].update(
        stackTemplateAssetObjectUrl="s3://cdk-hnb659fds-assets-111111111111-us-west-2/" + "0" * 64 + ".json"),
     "is not the template file's"),
    (_another_artifact_named_like_it, "could mean, or one whose id and name differ"),
])
def test_an_assembly_that_would_deploy_what_the_guard_did_not_compare_is_refused(monkeypatch, three_environments, edit, message):
    """Only `<pipeline stack>-support-<region>` in the pipeline's account and another region may come along, once,
    deployed from its template file with the pipeline stack's roles; and the template `cdk deploy` deploys must be
    the file compared."""
    monkeypatch.setenv("STACK_NAME", "CoderPipeline")
    monkeypatch.setenv("TEMPLATE_FILE", "CoderPipeline.template.json")
    assert _refusal(three_environments.directory, lambda _m, _f: None) == ""
    assert message in _refusal(three_environments.directory, edit)


def test_any_change_to_a_support_stack_is_a_row(three_environments):
    """An alias pointed at another key widens the pipeline's alias-scoped KMS grant without a policy statement: any
    change to the support stack shows, not only policy statements."""
    support = three_environments.templates[SUPPORT].body
    assert widening.support_rows({SUPPORT: (support, copy.deepcopy(support))}) == []
    repointed = copy.deepcopy(support)
    alias = next(lid for lid, r in repointed["Resources"].items() if r["Type"] == "AWS::KMS::Alias")
    repointed["Resources"][alias]["Properties"]["TargetKeyId"] = "arn:aws:kms:eu-central-1:111111111111:key/other"
    assert widening.support_rows({SUPPORT: (support, repointed)}) == [f"{SUPPORT}: {alias} changes"]
    extra = copy.deepcopy(support)
    extra["Resources"]["AnotherKey"] = {"Type": "AWS::KMS::Key", "Properties": {}}
    assert f"{SUPPORT}: AnotherKey added" in widening.support_rows({SUPPORT: (support, extra)})
