"""CloudFormation's execution-role policies (pipeline/execution-policies/, `make bootstrap` puts them instead of
AdministratorAccess): they cover every resource type of every synthesized template, hold nothing else, fit IAM's size
limit, and are what the assembly derives."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from pipeline import execution_policy
from pipeline.changes import read_assembly

DIRECTORY = execution_policy.DIRECTORY


def _committed(kind: str) -> set[str]:
    return {action for path in DIRECTORY.glob(f"{kind}-*.json")
            for action in json.loads(path.read_text())["Statement"][0]["Action"]}


def test_every_resource_type_of_every_template_is_covered(assembly):
    checked = 0
    for stack in read_assembly(assembly.directory):
        kind = "pipeline" if stack.stage == "Pipeline" else "platform"
        granted = _committed(kind)
        for resource_type in {r["Type"] for r in stack.template["Resources"].values()}:
            missing = execution_policy.type_actions(resource_type) - granted
            assert not missing, f"{stack.name}: {resource_type} needs {sorted(missing)}"
            checked += 1
        assert "ssm:GetParameters" in granted  # the bootstrap-version rule of every template
    assert checked > 60
    assert "lambda:InvokeFunction" in _committed("platform")  # the custom resources' providers


def test_the_committed_policies_are_what_the_assembly_derives(assembly):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert execution_policy.main(["--assembly", str(assembly.directory), "--check"]) == 0
    assert "current (4 documents)" in out.getvalue()


def test_each_policy_fits_iams_limit_and_names_single_actions():
    for path in DIRECTORY.glob("*.json"):
        document = json.loads(path.read_text())
        assert len(json.dumps(document, separators=(",", ":"))) <= 6144, path.name
        (statement,) = document["Statement"]
        assert statement["Effect"] == "Allow" and statement["Resource"] == "*"
        assert all(":" in action and "*" not in action for action in statement["Action"]), path.name
    assert not (_committed("pipeline") | _committed("platform")) & {"iam:*", "*"}
    assert "sts:AssumeRole" not in _committed("platform")


def test_a_new_resource_type_makes_the_policies_out_of_date(assembly, tmp_path):
    copy = tmp_path / "cdk.out"
    shutil.copytree(assembly.directory, copy, ignore=shutil.ignore_patterns("asset.*"))
    template_file = next(copy.glob("assembly-*Production/*ProductionObservability*.template.json"))
    template = json.loads(template_file.read_text())
    template["Resources"]["Queue"] = {"Type": "AWS::SQS::Queue", "Properties": {}}
    template_file.write_text(json.dumps(template))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert execution_policy.main(["--assembly", str(copy), "--check"]) == 1
    assert "out of date" in err.getvalue() and "platform-" in err.getvalue()
    written = tmp_path / "policies"
    with contextlib.redirect_stdout(io.StringIO()):
        assert execution_policy.main(["--assembly", str(copy), "--out", str(written)]) == 0
    actions = {a for path in written.glob("platform-*.json") for a in json.loads(path.read_text())["Statement"][0]["Action"]}
    assert {"sqs:CreateQueue", "sqs:DeleteQueue"} <= actions


def test_a_type_without_a_schema_is_named():
    with pytest.raises(execution_policy.PolicyError, match=r"AWS::Nothing::Here: no CloudFormation resource schema"):
        execution_policy.type_actions("AWS::Nothing::Here")
