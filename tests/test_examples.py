"""The committed three-environment example: dev -> staging -> approval -> production, from one TOML edit."""

from __future__ import annotations

import json

import yaml

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
