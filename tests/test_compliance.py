"""`python -m pipeline.compliance` on a small hand-made cloud assembly: counts, reasons, exit codes, report shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from pipeline import compliance
from tests.assembly import ROOT


def _violation(rule: str, description: str, *paths: str) -> dict:
    return {"ruleName": rule, "description": description, "severity": "error",
            "violatingConstructs": [{"constructPath": p, "constructFqn": "x"} for p in paths]}


def make_assembly(root: Path, *, violations=(), acknowledgments=None) -> Path:
    """A pipeline stack and a Staging Stage with one stack, as the CDK CLI lays them out."""
    (root / "assembly-App-Staging").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"artifacts": {
        "assembly-App-Staging": {"type": "cdk:cloud-assembly", "displayName": "App/Staging",
                                 "properties": {"directoryName": "assembly-App-Staging"}},
        "App": {"type": "aws:cloudformation:stack", "properties": {"templateFile": "App.template.json"}},
    }}))
    (root / "assembly-App-Staging" / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    plugins = {}
    for pack, rule, description, *paths in violations:
        plugins.setdefault(pack, []).append(_violation(rule, description, *paths))
    (root / "validation-report.json").write_text(json.dumps({"version": "1", "pluginReports": [
        {"pluginName": pack, "conclusion": "failure", "violations": items} for pack, items in plugins.items()
    ]}))
    for file_name, by_path in (acknowledgments or {}).items():
        metadata = {path: [{"type": "aws:cdk:acknowledged-rules", "data": rules}] for path, rules in by_path.items()}
        (root / file_name).write_text(json.dumps(metadata))
    return root


ACKS = {
    "assembly-App-Staging/AppStagingData.metadata.json": {
        "/App/Staging/Data/LangfuseEventsBucket": {
            "Annotation::AwsSolutions-S1": "Server access logs go to the Network layer's log bucket by L1 property",
            "Annotation::NIST.800.53.R5-S3BucketReplicationEnabled": "Single-region platform; DR is out of scope",
        },
        "/App/Staging/Data": {"Annotation::HIPAA.Security-LambdaDLQ": "Invoked synchronously by CloudFormation only"},
    },
    "App.metadata.json": {"/App/Pipeline": {"Annotation::AwsSolutions-IAM5[Resource::*]": "CDK Pipelines' own roles"}},
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.compliance", *args], cwd=ROOT, capture_output=True, text=True)


def outputs(tmp_path: Path) -> list[str]:
    return ["--junit", str(tmp_path / "out" / "c.xml"), "--markdown", str(tmp_path / "out" / "c.md"),
            "--json", str(tmp_path / "out" / "c.json")]


def test_clean_assembly_passes_and_reports_every_acknowledgment(tmp_path):
    assembly = make_assembly(tmp_path / "cdk.out", acknowledgments=ACKS)
    result = run("--assembly", str(assembly), *outputs(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "c.json").read_text())
    assert report["summary"] == {
        "AwsSolutions": {"open": 0, "acknowledged": 2},
        "NIST.800.53.R5": {"open": 0, "acknowledged": 1},
        "HIPAA.Security": {"open": 0, "acknowledged": 1},
        "PCI.DSS.321": {"open": 0, "acknowledged": 0},
    }
    s1 = next(e for e in report["entries"] if e["rule"] == "AwsSolutions-S1")
    assert (s1["stage"], s1["stack"], s1["path"], s1["status"]) == ("Staging", "Data", "LangfuseEventsBucket", "acknowledged")
    assert s1["detail"].startswith("Server access logs go to")
    pipeline = next(e for e in report["entries"] if e["stage"] == "Pipeline")
    assert (pipeline["stack"], pipeline["rule"]) == ("App", "AwsSolutions-IAM5[Resource::*]")
    markdown = (tmp_path / "out" / "c.md").read_text()
    assert markdown.splitlines()[2:4] == ["| pack | open | acknowledged |", "| --- | ---: | ---: |"]
    assert "| AwsSolutions | 0 | 2 |" in markdown and "**PASS**" in markdown
    assert "## Staging / Data" in markdown and "Single-region platform; DR is out of scope" in markdown


def test_open_findings_fail_and_are_named(tmp_path):
    assembly = make_assembly(
        tmp_path / "cdk.out",
        violations=[("AwsSolutions", "AwsSolutions-S1", "The S3 Bucket has server access logs disabled.",
                     "App/Staging/Network/PlantedBucket/Resource", "App/Pipeline/ArtifactsBucket/Resource"),
                    ("PCI.DSS.321", "PCI.DSS.321-S3BucketLoggingEnabled", "logging", "App/Staging/Network/PlantedBucket/Resource")],
        acknowledgments=ACKS,
    )
    result = run("--assembly", str(assembly), *outputs(tmp_path))
    assert result.returncode == 1
    assert "open: AwsSolutions-S1 at Staging/Network/PlantedBucket/Resource" in result.stdout
    suites = ElementTree.parse(tmp_path / "out" / "c.xml").getroot()
    cases = {(s.get("name"), c.get("name")): c for s in suites.iter("testsuite") for c in s.iter("testcase")}
    planted = cases[("Staging/Network", "AwsSolutions-S1 PlantedBucket/Resource")]
    assert planted.find("failure").get("message") == "open finding: The S3 Bucket has server access logs disabled."
    acknowledged = cases[("Staging/Data", "AwsSolutions-S1 LangfuseEventsBucket")]
    assert acknowledged.find("failure") is None
    assert acknowledged.find("system-out").text.startswith("acknowledged: Server access logs")
    assert suites.get("tests") == str(len(cases)) == "7" and suites.get("failures") == "3"
    markdown = (tmp_path / "out" / "c.md").read_text()
    assert "| AwsSolutions | 2 | 2 |" in markdown and "| PCI.DSS.321 | 1 | 0 |" in markdown and "**FAIL**" in markdown


def test_acknowledgment_without_a_reason_fails(tmp_path):
    acks = {"App.metadata.json": {"/App/Pipeline": {"Annotation::AwsSolutions-IAM4": "  "}}}
    assembly = make_assembly(tmp_path / "cdk.out", acknowledgments=acks)
    result = run("--assembly", str(assembly), *outputs(tmp_path))
    assert result.returncode == 1
    assert "no reason: AwsSolutions-IAM4 acknowledged on Pipeline/App/Pipeline" in result.stdout
    case = next(ElementTree.parse(tmp_path / "out" / "c.xml").getroot().iter("testcase"))
    assert case.find("failure").get("message") == "acknowledged without a reason"


def test_one_stage_only(tmp_path):
    assembly = make_assembly(
        tmp_path / "cdk.out",
        violations=[("AwsSolutions", "AwsSolutions-S1", "logs", "App/Pipeline/ArtifactsBucket/Resource")],
        acknowledgments=ACKS,
    )
    for name in ("Staging", "staging"):  # case-insensitive, as the release review's --stage
        result = run("--assembly", str(assembly), "--stage", name, *outputs(tmp_path))
        assert result.returncode == 0, result.stdout  # the pipeline stack's open finding is not this Stage's
        entries = json.loads((tmp_path / "out" / "c.json").read_text())["entries"]
        assert {e["stage"] for e in entries} == {"Staging"} and len(entries) == 3


def test_not_an_assembly_exits_2(tmp_path):
    empty = tmp_path / "cdk.out"
    empty.mkdir()
    result = run("--assembly", str(empty), *outputs(tmp_path))
    assert result.returncode == 2 and "no manifest.json" in result.stderr and "Traceback" not in result.stderr


def test_unknown_stage_exits_2(tmp_path):
    assembly = make_assembly(tmp_path / "cdk.out")
    result = run("--assembly", str(assembly), "--stage", "Prod", *outputs(tmp_path))
    assert result.returncode == 2
    assert "stage 'Prod' is not in the assembly (stages: Pipeline, Staging)" in result.stderr


def test_pack_and_path_helpers():
    assert compliance.pack_of("NIST.800.53.R5-IAMNoInlinePolicy") == "NIST.800.53.R5"
    assert compliance.pack_of("AwsSolutions-IAM5[Resource::*]") == "AwsSolutions"
    assert compliance.split_path("CoderPipeline/Staging/Network/Vpc/Resource", {"Staging"}) == ("Staging", "Network", "Vpc/Resource")
    assert compliance.split_path("/CoderPipeline/Pipeline/Role", {"Staging"}) == ("Pipeline", "CoderPipeline", "Pipeline/Role")


def test_pipeline_step_modules_need_nothing_but_the_standard_library():
    """The compliance and smoke steps run in CodeBuild before anything is installed (smoke installs boto3 only
    for its AWS modes): both modules must import on a bare interpreter, without the venv's packages."""
    bare = Path(sys.base_prefix) / "bin" / "python3"
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import pipeline.compliance, pipeline.smoke; print('ok')"
    result = subprocess.run([str(bare), "-I", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_example_values_fail_their_stage_only(tmp_path):
    """Synth warns (coder:example-value) about each example value left in the config; the stage's pre-step fails on
    its own and names the field; another stage passes."""
    assembly = make_assembly(tmp_path / "cdk.out")
    (assembly / "validation-report.json").write_text(json.dumps({"pluginReports": [{
        "pluginName": "Construct Annotations", "conclusion": "success",
        "violations": [{"ruleName": "Annotation::coder:example-value", "severity": "warning",
                        "description": "staging.account = '222222222222' is an example value: set the real one",
                        "violatingConstructs": [{"constructPath": "App/Staging/Network"}]}],
    }]}))
    result = run("--assembly", str(assembly), "--stage", "Staging", *outputs(tmp_path))
    assert result.returncode == 1
    assert "example value: staging.account = '222222222222'" in result.stdout
    assert "staging.account = '222222222222'" in (tmp_path / "out" / "c.md").read_text()
    assert json.loads((tmp_path / "out" / "c.json").read_text())["example_values"] == ["staging.account = '222222222222'"]
    assert 'failures="1"' in (tmp_path / "out" / "c.xml").read_text()
    other = run("--assembly", str(assembly), "--stage", "Pipeline", *outputs(tmp_path))
    assert other.returncode == 0, other.stdout


def test_every_output_is_optional_and_the_summary_goes_to_stdout(tmp_path):
    """A person runs it by hand: no file at all, the summary on stdout; each output on its own."""
    assembly = make_assembly(tmp_path / "cdk.out", acknowledgments=ACKS)
    result = run("--assembly", str(assembly))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Compliance report: all stages: 0 open, 4 acknowledged"
    assert "  AwsSolutions     open    0   acknowledged    2" in result.stdout
    assert not (tmp_path / "out").exists()
    for option, name in (("--junit", "c.xml"), ("--markdown", "c.md"), ("--json", "c.json")):
        result = run("--assembly", str(assembly), option, str(tmp_path / option.strip("-") / name))
        assert result.returncode == 0 and [p.name for p in (tmp_path / option.strip("-")).iterdir()] == [name]


def test_make_report_writes_all_three_for_the_whole_assembly(assembly, tmp_path):
    """The recipe of `make report` (Makefile), run on the session's assembly: the three files, every stage, and the
    example values of the shipped config do not fail it (they are in the summary)."""
    import os
    import re

    recipe = re.search(r"^report:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    command = recipe.replace("\t", "").replace("\\\n", " ").replace("$(OUT)", str(assembly.directory)).replace("$$", "$")
    result = subprocess.run(["sh", "-c", command.replace("python ", f"{sys.executable} ", 1)], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Compliance report: all stages: 0 open, ")
    assert sorted(p.name for p in (tmp_path / "build" / "report").iterdir()) == [
        "compliance.json", "compliance.md", "compliance.xml"]
    report = json.loads((tmp_path / "build" / "report" / "compliance.json").read_text())
    assert {e["stage"] for e in report["entries"]} == {"Pipeline", "Staging", "Production"}
