"""The delivery pipeline: source on main, synth with `make synth`, self-mutation, staging, approval, production."""

from __future__ import annotations

import json

import pytest

from app import pinned_cli_version


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


@pytest.fixture(scope="module")
def stages(pipeline):
    return {s["Name"]: s["Actions"] for s in pipeline.one("AWS::CodePipeline::Pipeline")["Stages"]}


def _ordered(actions):
    return [a["Name"] for a in sorted(actions, key=lambda a: (a["RunOrder"], a["Name"]))]


def test_stage_order(pipeline):
    names = [s["Name"] for s in pipeline.one("AWS::CodePipeline::Pipeline")["Stages"]]
    assert names == ["Source", "Build", "UpdatePipeline", "Assets", "Staging", "Production"]


def test_pipeline_type_and_name(pipeline, app_config):
    props = pipeline.one("AWS::CodePipeline::Pipeline")
    assert props["PipelineType"] == "V2"
    assert props["Name"] == f"{app_config.project}-platform"


def test_source_is_the_configured_connection_on_main(stages, app_config):
    (source,) = stages["Source"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    config = source["Configuration"]
    assert config["ConnectionArn"] == app_config.pipeline.connection_arn
    assert config["FullRepositoryId"] == app_config.pipeline.repository
    assert config["BranchName"] == "main"
    assert config.get("DetectChanges", True) is True  # every push to main starts the pipeline


def test_synth_runs_make_synth_on_node_22(pipeline, stages):
    (synth,) = stages["Build"]
    project_id = synth["Configuration"]["ProjectName"]["Ref"]
    project = pipeline.resources[project_id]["Properties"]
    spec = json.loads(project["Source"]["BuildSpec"])
    assert spec["phases"]["build"]["commands"] == ["make synth"]
    assert spec["phases"]["install"]["runtime-versions"]["nodejs"] == "22"
    assert spec["artifacts"]["base-directory"] == "cdk.out"
    assert project["Environment"]["Image"] == "aws/codebuild/standard:7.0"
    assert project["Environment"]["PrivilegedMode"] is False  # no Docker in the pipeline


def test_self_mutation_uses_the_pinned_cli(pipeline, stages):
    (mutate,) = stages["UpdatePipeline"]
    project = pipeline.resources[mutate["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    spec = json.loads(project["Source"]["BuildSpec"])
    assert spec["phases"]["install"]["commands"] == [f"npm install -g aws-cdk@{pinned_cli_version()}"]
    assert spec["phases"]["build"]["commands"] == ["cdk -a . deploy CoderPipeline --require-approval=never --verbose"]


def test_cli_pin_matches_package_lock():
    from tests.assembly import ROOT

    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == pinned_cli_version()


@pytest.mark.parametrize("stage", ["Staging", "Production"])
def test_each_stage_deploys_its_stacks_in_layer_order(stages, stage, app_config):
    env = app_config.staging if stage == "Staging" else app_config.production
    deploys = [a for a in stages[stage] if a["ActionTypeId"]["Category"] == "Deploy"]
    assert _ordered(deploys) == [
        "Network.Prepare", "Network.Deploy", "Data.Prepare", "Data.Deploy", "Platform.Prepare", "Platform.Deploy",
        "Observability.Prepare", "Observability.Deploy",
    ]
    for action in deploys:
        assert action["Configuration"]["StackName"].startswith(f"{stage}-")
        # Deployed through the target account's bootstrap roles, not from the pipeline account.
        assert f":iam::{env.account}:role/cdk-hnb659fds-deploy-role-{env.account}-{env.region}" in json.dumps(
            action["RoleArn"]
        )


def test_production_waits_for_manual_approval(stages):
    production = stages["Production"]
    approvals = [a for a in production if a["ActionTypeId"]["Category"] == "Approval"]
    assert [a["Name"] for a in approvals] == ["PromoteToProduction"]
    first_deploy = min(a["RunOrder"] for a in production if a["ActionTypeId"]["Category"] == "Deploy")
    assert approvals[0]["RunOrder"] < first_deploy
    assert not [a for a in stages["Staging"] if a["ActionTypeId"]["Category"] == "Approval"]


def test_artifacts_encrypted_with_a_rotated_cross_account_key(pipeline):
    (key,) = pipeline.props("AWS::KMS::Key")
    assert key["EnableKeyRotation"] is True
    (bucket,) = pipeline.props("AWS::S3::Bucket")
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert rule["SSEAlgorithm"] == "aws:kms"
    pipeline_props = pipeline.one("AWS::CodePipeline::Pipeline")
    assert pipeline_props["ArtifactStore"]["EncryptionKey"]["Type"] == "KMS"


def test_stages_target_the_configured_accounts(assembly, app_config):
    for stage, env in (("Staging", app_config.staging), ("Production", app_config.production)):
        for layer in ("Network", "Data", "Platform"):
            directory = assembly.stack(stage, layer).path.parent
            manifest = json.loads((directory / "manifest.json").read_text())
            environments = {
                a["environment"] for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"
            }
            assert environments == {f"aws://{env.account}/{env.region}"}
