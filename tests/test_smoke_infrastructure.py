"""The smoke-test infrastructure: the probe Lambda and role inside each Stage, the Stage outputs, and the
pipeline's post-step after each Stage's four stacks."""

from __future__ import annotations

import json

import pytest

from tests.assembly import ROOT


@pytest.fixture
def observability(assembly, stage):
    return assembly.stack(stage, "Observability")


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


def _stage_actions(pipeline, stage: str) -> list[dict]:
    (props,) = pipeline.props("AWS::CodePipeline::Pipeline")
    return next(s["Actions"] for s in props["Stages"] if s["Name"] == stage)


def test_probe_function_runs_the_smoke_checks_in_the_app_subnets(observability, env_config):
    function = observability.resources[observability.logical_id("/Observability/SmokeProbe/Function/Resource")]
    props = function["Properties"]
    assert (props["Runtime"], props["Handler"], props["Timeout"]) == ("python3.14", "index.handler", 300)
    vpc = props["VpcConfig"]
    assert "SmokeProbeSecurityGroup" in json.dumps(vpc["SecurityGroupIds"])
    assert len(vpc["SubnetIds"]) == 2 and all("PrivateAppSubnet" in json.dumps(s) for s in vpc["SubnetIds"])
    variables = props["Environment"]["Variables"]
    assert variables["SMOKE_CHECKS"] == " ".join(smoke_checks(env_config))
    assert "LoadBalancer" in json.dumps(variables["SMOKE_CONNECT"]) and json.dumps(variables["SMOKE_CONNECT"]).endswith(':443"]]}')
    assert int(variables["SMOKE_MAX_DEADLINE"]) < props["Timeout"]
    # The asset is the handler and the very check module the CLI imports.
    assets = json.loads(next(observability.path.parent.glob(f"{observability.path.name.split('.')[0]}.assets.json")).read_text())
    folder = observability.path.parent / assets["files"][props["Code"]["S3Key"].removesuffix(".zip")]["source"]["path"]
    assert sorted(p.name for p in folder.iterdir()) == ["cfn_response.py", "index.py", "probe.py"]
    probe = ROOT / "constructs_lib" / "lambdas" / "smoke_probe" / "probe.py"
    assert (folder / "probe.py").read_text() == probe.read_text()
    assert "from constructs_lib.lambdas.smoke_probe.probe import" in (ROOT / "pipeline" / "smoke.py").read_text()


def smoke_checks(env_config) -> list[str]:
    """What the probe and the pipeline's post-step must check: every routed service, by its host name."""
    domain = env_config.domain
    return [
        f"coder=coder.{domain}/api/v2/buildinfo",
        f"litellm=ai.{domain}/health/readiness",
        f"key-provisioner=admin.{domain}/@redirect:login.microsoftonline.com",
        f"langfuse-web=langfuse.{domain}/api/public/health",
    ]


def test_smoke_checks_cover_every_service(env_config):
    """One check per service behind the ALB: a service added to the catalogue needs its check here (and, through
    the catalogue, gets one in the probe and the pipeline's post-step, which the tests above compare with this)."""
    from constructs_lib.service_catalogue import routed

    assert [check.split("=", 1)[0] for check in smoke_checks(env_config)] == [service.name for service in routed()]


def test_smoke_role_trusts_only_the_pipelines_smoke_step_of_its_environment(observability, env_config, app_config):
    role = observability.resources[observability.logical_id("/Observability/SmokeProbe/Role/Resource")]["Properties"]
    assert role["RoleName"] == f"coder-{env_config.name}-smoke-tests"
    assert role["MaxSessionDuration"] == 3600
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    pipeline_account = app_config.pipeline.account
    assert statement["Action"] == "sts:AssumeRole"
    assert f":iam::{pipeline_account}:root" in json.dumps(statement["Principal"])
    assert statement["Condition"] == {
        "ArnEquals": {"aws:PrincipalArn": f"arn:aws:iam::{pipeline_account}:role/coder-pipeline-smoke-{env_config.name}"}}


def test_smoke_role_may_only_invoke_the_probe_and_read_target_health(observability, env_config):
    """And, where the environment bakes, read its alarms' states (tests/test_release_gates.py)."""
    role_id = observability.logical_id("/Observability/SmokeProbe/Role/Resource")
    (policy,) = [p for p in observability.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert set(statements) == {"InvokeProbe", "ReadTargetHealth", *(["ReadAlarmStates"] if env_config.release.bake_minutes else [])}
    assert statements["InvokeProbe"]["Action"] == "lambda:InvokeFunction"
    assert statements["InvokeProbe"]["Resource"] == {
        "Fn::GetAtt": [observability.logical_id("/Observability/SmokeProbe/Function/Resource"), "Arn"]}
    assert statements["ReadTargetHealth"]["Action"] == "elasticloadbalancing:DescribeTargetHealth"
    assert "ManagedPolicyArns" not in observability.resources[role_id]["Properties"]


def test_stage_outputs_for_the_pipeline_step(observability, env_config, assembly, stage):
    outputs = observability.body["Outputs"]
    by_prefix = {name.rstrip("0123456789ABCDEF"): value["Value"] for name, value in outputs.items() if name.startswith("SmokeProbe")}
    assert set(by_prefix) == {"SmokeProbeFunctionName", "SmokeProbeRoleArn", "SmokeProbeChecks", "SmokeProbeTargetGroups"}
    assert by_prefix["SmokeProbeChecks"] == " ".join(smoke_checks(env_config))
    groups = json.dumps(by_prefix["SmokeProbeTargetGroups"])
    platform = assembly.stack(stage, "Platform")
    for name in ("Coder", "LiteLLM", "KeyProvisioner"):
        output_ref = platform.logical_id(f"/Platform/{name}/Service/TargetGroup/Resource")
        assert output_ref in groups, name
    assert observability.logical_id("/Observability/Langfuse/Web/TargetGroup/Resource") in groups
    parts = by_prefix["SmokeProbeTargetGroups"]["Fn::Join"][1]
    assert parts[1::2] == [" ", " ", " "]  # four ARNs, space-separated


@pytest.mark.parametrize("stage_name", ["Staging", "Production"])
def test_post_step_runs_after_the_four_stacks(pipeline, stage_name):
    actions = _stage_actions(pipeline, stage_name)
    (smoke,) = [a for a in actions if a["Name"] == f"SmokeTests{stage_name}"]
    deploys = [a for a in actions if a["ActionTypeId"]["Category"] == "Deploy"]
    assert {a["Name"] for a in deploys} == {f"{layer}.Deploy" for layer in ("Network", "Data", "Platform", "Observability")}
    assert smoke["RunOrder"] > max(a["RunOrder"] for a in deploys)
    variables = {v["name"]: v["value"] for v in json.loads(smoke["Configuration"]["EnvironmentVariables"])}
    assert set(variables) == {"PROBE_FUNCTION", "PROBE_ROLE_ARN", "SMOKE_CHECKS", "SMOKE_TARGET_GROUPS"}
    assert all(v.startswith(f"#{{CoderPipeline{stage_name}Observability") for v in variables.values())


def test_staging_smoke_tests_stop_promotion(pipeline):
    """The approval comes after the whole Staging stage (smoke tests included) and before any production deploy."""
    (props,) = pipeline.props("AWS::CodePipeline::Pipeline")
    names = [s["Name"] for s in props["Stages"]]
    assert names.index("Staging") < names.index("Production")
    production = _stage_actions(pipeline, "Production")
    (approval,) = [a for a in production if a["ActionTypeId"]["Category"] == "Approval"]
    deploys = [a for a in production if a["ActionTypeId"]["Category"] == "Deploy"]
    assert approval["RunOrder"] < min(a["RunOrder"] for a in deploys)


@pytest.mark.parametrize(("stage_name", "config_name"), [("Staging", "staging"), ("Production", "production")])
def test_post_step_project(pipeline, app_config, stage_name, config_name):
    env = app_config.environment(config_name)
    (smoke,) = [a for a in _stage_actions(pipeline, stage_name) if a["Name"] == f"SmokeTests{stage_name}"]
    project_id = smoke["Configuration"]["ProjectName"]["Ref"]
    spec = json.loads(pipeline.resources[project_id]["Properties"]["Source"]["BuildSpec"])
    (command,) = spec["phases"]["build"]["commands"]
    assert command.startswith("python -m pipeline.smoke ")
    for part in ('--role-arn "$PROBE_ROLE_ARN"', '--function "$PROBE_FUNCTION"', '--check "$SMOKE_CHECKS"',
                 '--target-group "$SMOKE_TARGET_GROUPS"', f"--region {env.region}", "--junit reports/smoke.xml"):
        assert part in command
    assert spec["reports"]["smoke-tests"] == {"base-directory": "reports", "files": ["smoke.xml"], "file-format": "JUNITXML"}
    assert spec["phases"]["install"]["commands"] == [
        "python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r buildspecs/locks/boto3.txt"]
    role_id = pipeline.resources[project_id]["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    # The name the environment's smoke-test role trusts, on the role of this step only.
    assert pipeline.resources[role_id]["Properties"]["RoleName"] == f"coder-pipeline-smoke-{config_name}"
    (policy,) = [p for p in pipeline.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]]
    assumes = [s for s in policy["PolicyDocument"]["Statement"] if s["Action"] == "sts:AssumeRole"]
    assert assumes == [{"Action": "sts:AssumeRole", "Effect": "Allow",
                        "Resource": f"arn:aws:iam::{env.account}:role/coder-{config_name}-smoke-tests"}]
