"""The synth summary on a small hand-made cloud assembly: stacks, resource counts, findings, exit status."""

from __future__ import annotations

import json

import pytest

from pipeline.synth_summary import main


def write_assembly(root, violations):
    stage = root / "assembly-App-Staging"
    stage.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"artifacts": {
        "assembly-App-Staging": {"type": "cdk:cloud-assembly", "properties": {"directoryName": "assembly-App-Staging"}},
        "App": {"type": "aws:cloudformation:stack", "properties": {"templateFile": "App.template.json"}},
    }}))
    (root / "App.template.json").write_text(json.dumps({"Resources": {"K": {"Type": "AWS::KMS::Key"}}}))
    (stage / "manifest.json").write_text(json.dumps({"artifacts": {
        "Net": {"type": "aws:cloudformation:stack", "displayName": "App/Staging/Network",
                "properties": {"templateFile": "Net.template.json", "stackName": "Staging-Network"}},
    }}))
    (stage / "Net.template.json").write_text(json.dumps({"Resources": {
        "A": {"Type": "AWS::EC2::VPC"}, "B": {"Type": "AWS::EC2::Subnet"}, "C": {"Type": "AWS::EC2::Subnet"}}}))
    (stage / "Net.metadata.json").write_text(json.dumps({"/App/Staging/Network/Vpc": [
        {"type": "aws:cdk:acknowledged-rules", "data": {"Annotation::AwsSolutions-VPC7": "flow logs go to S3"}}]}))
    (root / "validation-report.json").write_text(json.dumps({"pluginReports": [
        {"pluginName": plugin, "violations": [{"ruleName": rule, "violatingConstructs": [{"constructPath": path}]}]}
        for plugin, rule, path in violations
    ]}))


def test_counts_stacks_resources_and_findings(tmp_path, capsys):
    write_assembly(tmp_path, [("AwsSolutions", "AwsSolutions-S1", "App/Staging/Data/B"),
                              ("PCI.DSS.321", "PCI.DSS.321-X", "App/Staging/Data/B")])
    assert main([str(tmp_path), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "Stacks (2):" in out
    assert "Staging-Network" in out and "3 resources" in out and "Subnet 2" in out
    assert "AwsSolutions     open    1   acknowledged    1" in out
    assert "PCI.DSS.321      open    1   acknowledged    0" in out
    assert "NIST.800.53.R5   open    0" in out


def test_open_findings_fail_unless_report_only(tmp_path):
    write_assembly(tmp_path, [("AwsSolutions", "AwsSolutions-S1", "App/Staging/Data/B")])
    assert main([str(tmp_path)]) == 1


@pytest.mark.parametrize("flags", [[], ["--report-only"]])
def test_non_compliance_errors_always_fail(tmp_path, capsys, flags):
    write_assembly(tmp_path, [("Annotation", "Annotation::error-annotation", "App/Staging/Network")])
    assert main([str(tmp_path), *flags]) == 1
    assert "Annotation Annotation::error-annotation at App/Staging/Network" in capsys.readouterr().err


def test_missing_assembly_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "not a cloud assembly" in capsys.readouterr().err
