"""Whole-app properties: offline synth, compliance packs reach every stack and block, no environment name in ids."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from constructs_lib.jsii_kernel import limit_background_threads
from pipeline.synth_summary import COMPLIANCE_PACKS, read_findings
from tests.assembly import ROOT
from tests.synths import tool_env


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


# Run in a fresh interpreter: imports the app, then prints the NODE_OPTIONS that each Node.js process below it (the
# CDK's kernel: jsii's runtime and the program it starts) was started with.
_KERNEL_OPTIONS = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import app  # noqa: F401 - starts the kernel

def children(pid):
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and stat.rsplit(")", 1)[1].split()[1] == str(pid):
            yield int(entry)
            yield from children(int(entry))

found = []
for pid in children(os.getpid()):
    command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    environ = dict(v.split(b"=", 1) for v in open(f"/proc/{pid}/environ", "rb").read().split(b"\\0") if b"=" in v)
    if os.path.basename(command[0]) == b"node":
        found.append(environ.get(b"NODE_OPTIONS", b"").decode())
print(json.dumps(found))
"""


def test_the_kernel_runs_with_one_v8_background_thread():
    """The app's kernel gets `--v8-pool-size=1` (18 % less CPU per synth on 2 cores) before it starts: both of its
    Node.js processes were started with it."""
    env = {k: v for k, v in tool_env().items() if k != "NODE_OPTIONS"}
    result = subprocess.run([sys.executable, "-O", "-c", _KERNEL_OPTIONS], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["--v8-pool-size=1", "--v8-pool-size=1"]  # jsii-runtime.js and its program


@pytest.mark.parametrize(("given", "expected"), [
    ("--max-old-space-size=6000", "--max-old-space-size=6000 --v8-pool-size=1"),
    ("--v8-pool-size=4 --max-old-space-size=6000", "--v8-pool-size=4 --max-old-space-size=6000"),
    ("--v8-pool-size 2", "--v8-pool-size 2"),
])
def test_the_users_node_options_are_kept(given, expected):
    environ = {"NODE_OPTIONS": given}
    limit_background_threads(environ)
    assert environ == {"NODE_OPTIONS": expected}
