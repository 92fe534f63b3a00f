"""The committed three-environment example: dev -> staging -> approval -> production, from one TOML edit."""

from __future__ import annotations

import json

from config.loader import load_config
from pipeline.synth_summary import read_findings
from tests.synths import THREE_ENVIRONMENTS


def _stages(assembly) -> dict[str, list[dict]]:
    (props,) = assembly.templates["CoderPipeline"].props("AWS::CodePipeline::Pipeline")
    return {stage["Name"]: stage["Actions"] for stage in props["Stages"]}


def test_three_environments_in_promotion_order(three_environments):
    assert list(_stages(three_environments)) == ["Source", "Build", "UpdatePipeline", "Assets", "Dev", "Staging", "Production"]
    layers = ("Network", "Data", "Platform", "Observability")
    assert set(three_environments.templates) == {"CoderPipeline"} | {
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
        "coder-dev-terraform-state-444444444444-us-west-2"}
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
