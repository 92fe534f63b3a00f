"""The committed three-environment example: dev -> staging -> approval -> production, from one TOML edit; dev in
another region (eu-central-1) than the pipeline (us-west-2)."""

from __future__ import annotations

import json
import subprocess

import yaml

from config.loader import load_config
from pipeline.synth_summary import read_findings
from tests.assembly import ROOT
from tests.synths import THREE_ENVIRONMENTS, tool_env

SUPPORT = "CoderPipeline-support-eu-central-1"


def _stages(assembly) -> dict[str, list[dict]]:
    (props,) = assembly.templates["CoderPipeline"].props("AWS::CodePipeline::Pipeline")
    return {stage["Name"]: stage["Actions"] for stage in props["Stages"]}


def test_three_environments_in_promotion_order(three_environments):
    assert list(_stages(three_environments)) == ["Source", "Build", "UpdatePipeline", "Assets", "Dev", "Staging", "Production"]
    layers = ("Network", "Data", "Platform", "Observability")
    assert set(three_environments.templates) == {"CoderPipeline", SUPPORT} | {
        f"{stage}-{layer}" for stage in ("Dev", "Staging", "Production") for layer in layers
    }
    assert [f for f in read_findings(three_environments.directory) if f.blocking] == []


def test_each_environment_has_its_report_before_and_smoke_tests_after(three_environments):
    stages = _stages(three_environments)
    for stage in ("Dev", "Staging", "Production"):
        actions = {a["Name"]: a for a in stages[stage]}
        deploys = [a["RunOrder"] for a in actions.values() if a["ActionTypeId"]["Category"] == "Deploy"]
        assert actions[f"Compliance{stage}"]["RunOrder"] < min(deploys)
        assert actions[f"SmokeTests{stage}"]["RunOrder"] > max(deploys)


def test_only_production_waits_for_a_person(three_environments):
    stages = _stages(three_environments)
    approvals = {
        stage: [a["Name"] for a in actions if a["ActionTypeId"]["Category"] == "Approval"]
        for stage, actions in stages.items()
    }
    assert approvals == {"Source": [], "Build": [], "UpdatePipeline": [], "Assets": [], "Dev": [], "Staging": [],
                         "Production": ["PromoteToProduction"]}
    (approval,) = [a for a in stages["Production"] if a["Name"] == "PromoteToProduction"]
    assert approval["Configuration"]["CustomData"].startswith("Staging (222222222222) is deployed and smoke-tested.")


def test_dev_gets_its_own_account_names_and_secrets(three_environments):
    dev = load_config(THREE_ENVIRONMENTS).environment("dev")
    data = three_environments.stack("Dev", "Data")
    assert {p["Name"] for p in data.props("AWS::SecretsManager::Secret")} >= {"dev/rds/master", "dev/litellm/master-key"}
    assert {p["BucketName"] for p in data.props("AWS::S3::Bucket")} >= {
        "coder-dev-terraform-state-444444444444-eu-central-1"}
    manifest = json.loads((data.path.parent / "manifest.json").read_text())
    environments = {a["environment"] for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"}
    assert environments == {f"aws://{dev.account}/{dev.region}"}


def test_the_pipeline_builds_the_config_it_was_deployed_with(three_environments):
    """Synthesized with config/examples/three-environments.toml, the pipeline's Synth step builds that file and its
    release reviews read that file's allowances (the default file would deploy the example)."""
    pipeline = three_environments.templates["CoderPipeline"]
    specs = {}
    for lid, resource in pipeline.resources.items():
        spec = resource["Properties"]["Source"].get("BuildSpec", "") if resource["Type"] == "AWS::CodeBuild::Project" else ""
        if spec.lstrip().startswith("{"):  # the assets project's buildspec is a file of the assembly
            specs[lid] = json.loads(spec)
    (synth,) = [spec for lid, spec in specs.items() if lid.startswith("PipelineBuildSynth")]
    assert synth["phases"]["build"]["commands"] == ["make synth CONFIG=config/examples/three-environments.toml"]
    reviews = [spec for lid, spec in specs.items() if "Review" in lid]
    assert len(reviews) == 3
    for spec in reviews:
        (command,) = spec["phases"]["build"]["commands"]
        assert " --config config/examples/three-environments.toml " in command


def test_an_environment_without_a_gateway_has_no_gateway_models_url_or_secret(three_environments):
    """dev has custom_llm_api_base = "": LiteLLM gets neither the gateway's URL nor its key, its config file lists no
    custom-* model, and no gateway secret exists; staging (with a gateway) keeps all three."""
    def litellm(stage: str) -> tuple[dict, set, list]:
        platform = three_environments.stack(stage, "Platform")
        task = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/TaskDefinition/Resource")]["Properties"]
        (container,) = task["ContainerDefinitions"]
        environment = {e["Name"]: e["Value"] for e in container["Environment"]}
        assets = json.loads(next(platform.path.parent.glob(f"{platform.path.name.split('.')[0]}.assets.json")).read_text())
        sources = {f"{h}.yaml": entry["source"]["path"] for h, entry in assets["files"].items()}
        config = yaml.safe_load((platform.path.parent / sources[environment["LITELLM_CONFIG_BUCKET_OBJECT_KEY"]]).read_text())
        return environment, {s["Name"] for s in container["Secrets"]}, [m["model_name"] for m in config["model_list"]]

    environment, secrets, models = litellm("Dev")
    assert not {"CUSTOM_LLM_API_BASE", "CUSTOM_LLM_CLAUDE_API_BASE"} & set(environment) and "CUSTOM_LLM_API_KEY" not in secrets
    assert models and not [m for m in models if m.startswith("custom-")]
    assert "claude-sonnet-4-5" in models
    data = three_environments.stack("Dev", "Data")
    assert not [r for r in data.resources.values() if r["Type"] == "AWS::SecretsManager::Secret"
                and "custom-llm" in json.dumps(r["Properties"].get("Name"))]
    environment, secrets, models = litellm("Staging")
    assert environment["CUSTOM_LLM_API_BASE"] == "https://llm-gateway.example.com/v2/api" and "CUSTOM_LLM_API_KEY" in secrets
    assert "custom-gpt-4o" in models


def _litellm_models(assembly, stage: str) -> list[str]:
    platform = assembly.stack(stage, "Platform")
    task = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/TaskDefinition/Resource")]["Properties"]
    (container,) = task["ContainerDefinitions"]
    key = {e["Name"]: e["Value"] for e in container["Environment"]}["LITELLM_CONFIG_BUCKET_OBJECT_KEY"]
    assets = json.loads(next(platform.path.parent.glob(f"{platform.path.name.split('.')[0]}.assets.json")).read_text())
    (source,) = [entry["source"]["path"] for h, entry in assets["files"].items() if f"{h}.yaml" == key]
    config = yaml.safe_load((platform.path.parent / source).read_text())
    return [m["litellm_params"]["model"] for m in config["model_list"]]


def test_dev_in_another_region_deploys_there_through_a_support_stack_of_the_pipeline_account(three_environments):
    """CDK Pipelines keeps dev's artifacts in a support stack of the pipeline account in eu-central-1 (its bucket and
    key): the Dev stage's actions run in eu-central-1 from that bucket, and its Bedrock models are the EU profiles."""
    manifest = json.loads((three_environments.directory / "manifest.json").read_text())
    stacks = {a["properties"].get("stackName", lid): a for lid, a in manifest["artifacts"].items()
              if a["type"] == "aws:cloudformation:stack"}
    assert stacks[SUPPORT]["environment"] == "aws://111111111111/eu-central-1"
    # deployed with the pipeline region's bootstrap roles, needing no bootstrap in eu-central-1 (make bootstrap lists none)
    roles = {key: stacks[SUPPORT]["properties"][key] for key in ("assumeRoleArn", "cloudFormationExecutionRoleArn")}
    assert all(arn.endswith("-111111111111-us-west-2") for arn in roles.values())
    assert "requiresBootstrapStackVersion" not in stacks[SUPPORT]["properties"]
    (pipeline,) = three_environments.templates["CoderPipeline"].props("AWS::CodePipeline::Pipeline")
    stores = {store["Region"]: store["ArtifactStore"] for store in pipeline["ArtifactStores"]}
    assert set(stores) == {"us-west-2", "eu-central-1"}
    assert stores["eu-central-1"]["EncryptionKey"]["Id"].startswith("arn:aws:kms:eu-central-1:111111111111:alias/")
    regions = {stage["Name"]: {a.get("Region") for a in stage["Actions"] if a["ActionTypeId"]["Category"] == "Deploy"}
               for stage in pipeline["Stages"] if stage["Name"] in ("Dev", "Staging")}
    assert regions == {"Dev": {"eu-central-1"}, "Staging": {None}}  # no Region: the pipeline's own
    models = [m for m in _litellm_models(three_environments, "Dev") if m.startswith("bedrock/")]
    assert models and all(m.startswith("bedrock/eu.") for m in models), models


def test_the_pipeline_may_use_the_support_key_only_through_its_alias(three_environments):
    """CDK grants the pipeline's roles the support stack's key on `*`: no pipeline statement keeps a KMS action on
    every resource; the one that replaces it names keys of the pipeline account in eu-central-1 carrying that stack's
    alias."""
    support = three_environments.templates[SUPPORT]
    (alias,) = support.props("AWS::KMS::Alias")
    pipeline = three_environments.templates["CoderPipeline"]
    scoped = []
    for policy in pipeline.props("AWS::IAM::Policy"):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if any(a.startswith("kms:") for a in actions):
                assert "*" not in resources, statement
            if "Condition" in statement and "kms:ResourceAliases" in json.dumps(statement["Condition"]):
                scoped.append(statement)
    assert scoped
    for statement in scoped:
        assert statement["Resource"] == "arn:aws:kms:eu-central-1:111111111111:key/*"
        assert statement["Condition"] == {"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias["AliasName"]}}
        assert set(statement["Action"]) <= {"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey*",
                                            "kms:ReEncrypt*"}


def test_the_support_stack_is_encrypted_logged_and_lint_clean(three_environments):
    """Its artifact bucket: KMS with its key, TLS only, access logs to a log bucket of its own region (server access
    logs cannot cross regions); cfn-lint passes its template."""
    support = three_environments.templates[SUPPORT]
    buckets = support.of_type("AWS::S3::Bucket")
    (artifacts,) = [r["Properties"] for lid, r in buckets.items() if lid.startswith("CrossRegionCodePipelineReplication")]
    (logs,) = [lid for lid in buckets if lid.startswith("AccessLogsBucket")]
    assert artifacts["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": logs}, "LogFilePrefix": "artifacts/"}
    (rule,) = artifacts["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert buckets[logs]["Properties"]["BucketName"] == "coder-pipeline-access-logs-111111111111-eu-central-1"
    policies = json.dumps(support.props("AWS::S3::BucketPolicy"))
    assert '"aws:SecureTransport": "false"' in policies
    assert support.one("AWS::KMS::Key")["EnableKeyRotation"] is True
    lint = subprocess.run([str(ROOT / ".venv" / "bin" / "cfn-lint"), str(support.path)], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_pipeline_guard_reads_and_compares_the_support_stack(three_environments):
    pipeline = three_environments.templates["CoderPipeline"]
    (function,) = [r["Properties"] for r in pipeline.of_type("AWS::Lambda::Function").values()
                   if "SUPPORT_STACKS" in r["Properties"].get("Environment", {}).get("Variables", {})]
    assert function["Environment"]["Variables"]["SUPPORT_STACKS"] == f"{SUPPORT}@eu-central-1"
    reads = [s for p in pipeline.props("AWS::IAM::Policy") for s in p["PolicyDocument"]["Statement"]
             if s.get("Sid") == "ReadThePipelineStack"]
    assert [sorted(s["Resource"]) for s in reads] == [[
        f"arn:aws:cloudformation:eu-central-1:111111111111:stack/{SUPPORT}/*",
        "arn:aws:cloudformation:us-west-2:111111111111:stack/CoderPipeline/*"]]


def test_a_key_wildcard_without_the_alias_condition_fails_synth():
    """The cdk-nag acknowledgment of a support key's wildcard holds only for the alias-bound statement."""
    import pytest

    from pipeline.pipeline_stack import _pipeline_wildcard_reason

    key = "arn:aws:kms:eu-central-1:111111111111:key/*"
    bound = {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key,
                            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/support"}}}]}
    assert "alias" in _pipeline_wildcard_reason(f"Resource::{key}", bound)
    with pytest.raises(ValueError, match="without the support alias condition"):
        _pipeline_wildcard_reason(f"Resource::{key}", {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt",
                                                                         "Resource": key}]})
