"""Whole-app properties: offline synth, compliance packs reach every stack and block, no environment name in ids."""

from __future__ import annotations

import json

from pipeline.synth_summary import COMPLIANCE_PACKS, read_findings


def test_synth_needs_no_lookups(assembly):
    for manifest in assembly.directory.rglob("manifest.json"):
        assert json.loads(manifest.read_text()).get("missing", []) == [], f"context lookup in {manifest}"


def test_only_compliance_packs_report(assembly):
    plugins = {f.pack for f in read_findings(assembly.directory) if f.blocking}
    assert plugins <= set(COMPLIANCE_PACKS), plugins


def test_an_unacknowledged_finding_fails_synth_and_every_pack_sees_every_stage(variant):
    """Blocking, and reach: a bucket planted in the pipeline stack and in a stack of each Stage makes the real CDK
    CLI fail, naming the resource, with findings from all four packs for all three places."""
    assert variant.result.returncode != 0, "synth passed with unacknowledged findings"
    assert "CoderPipeline/Staging/Network/PlantedBucket/Resource" in variant.result.stdout + variant.result.stderr
    findings = [f for f in read_findings(variant.assembly.directory) if f.blocking]
    planted = {f.construct_path for f in findings if "PlantedBucket" in f.construct_path}
    assert planted == {
        "CoderPipeline/PlantedBucket/Resource",
        "CoderPipeline/Staging/Network/PlantedBucket/Resource",
        "CoderPipeline/Production/Data/PlantedBucket/Resource",
    }
    for pack in COMPLIANCE_PACKS:
        assert {f.construct_path for f in findings if f.pack == pack} == planted, pack
    # The findings are the planted buckets' only: everything else of the app stays acknowledged.
    assert all("PlantedBucket" in f.construct_path for f in findings)


def test_the_shipped_app_has_no_open_finding(assembly):
    assert [f for f in read_findings(assembly.directory) if f.blocking] == []


def test_no_environment_name_in_construct_ids(assembly):
    tree = json.loads((assembly.directory / "tree.json").read_text())

    def walk(node, path):
        for child_id, child in node.get("children", {}).items():
            if child.get("constructInfo", {}).get("fqn") == "aws-cdk-lib.AssetStaging":
                continue  # CDK's own asset-staging construct is always called "Staging"
            if child_id.startswith(("from ", "to ")):
                continue  # security-group rule ids that CDK derives from the peer group's unique id
            yield f"{path}/{child_id}", child_id
            yield from walk(child, f"{path}/{child_id}")

    stages = tree["tree"]["children"]["CoderPipeline"]["children"]
    for stage_id in ("Staging", "Production"):
        for path, construct_id in walk(stages[stage_id], stage_id):
            lowered = construct_id.lower()
            assert "staging" not in lowered and "production" not in lowered, path
