"""Whole-app properties: offline synth, compliance packs reach every stack, no environment name in construct ids."""

from __future__ import annotations

import json

from pipeline.synth_summary import COMPLIANCE_PACKS, read_findings


def test_synth_needs_no_lookups(assembly):
    for manifest in assembly.directory.rglob("manifest.json"):
        assert json.loads(manifest.read_text()).get("missing", []) == [], f"context lookup in {manifest}"


def test_only_compliance_packs_report(assembly):
    plugins = {f.pack for f in read_findings(assembly.directory)}
    assert plugins <= set(COMPLIANCE_PACKS), plugins


def test_packs_reach_the_pipeline_and_both_stages(assembly):
    findings = read_findings(assembly.directory)
    for pack in COMPLIANCE_PACKS:
        roots = {f.construct_path.split("/")[1] for f in findings if f.pack == pack}
        assert roots == {"Pipeline", "Staging", "Production"}, (pack, roots)


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
