"""The approved release is the one that deploys: only the Synth step writes what later steps and the deploy read,
and no step installs a package whose files nobody checked (pipeline/locks.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from pipeline.locks import LOCKS, canonical, read_lock, read_pins
from tests.assembly import ROOT
from tests.iam_policy import Request, Resolver, allowed, role_statements

WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl", "s3:PutObjectTagging",
          "s3:PutObjectRetention", "s3:PutObjectLegalHold")


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


def _buildspecs(pipeline, assembly) -> dict[str, str]:
    """Every CodeBuild project's buildspec, inline or a file of the assembly, as text."""
    found = {}
    for logical_id, project in pipeline.of_type("AWS::CodeBuild::Project").items():
        spec = project["Properties"]["Source"]["BuildSpec"]
        path = assembly.directory / spec
        found[logical_id] = path.read_text() if not spec.lstrip().startswith("{") and path.exists() else spec
    return found


def test_only_the_synth_step_writes_the_build_output(pipeline, app_config):
    """Every role of the pipeline stack, asked whether it may overwrite or delete an object of Synth's output (what
    the compliance report and the release review read, and what every environment deploys): only Synth may, besides
    CodePipeline's own role and the source action's, which write the source."""
    resolve = Resolver(pipeline, app_config.pipeline.account, app_config.pipeline.region)
    bucket = resolve({"Fn::GetAtt": [pipeline.logical_id("/Pipeline/Pipeline/ArtifactsBucket/Resource"), "Arn"]})
    synth_output = f"{bucket}/coder-platform/Synth_Outp/Ab3dE9x"
    writers = set()
    for role in pipeline.of_type("AWS::IAM::Role"):
        statements = role_statements(pipeline, role, resolve)
        if any(allowed(statements, Request(action, synth_output)) for action in WRITES):
            writers.add(pipeline.resources[role]["Metadata"]["aws:cdk:path"].split("/", 1)[1])
    assert writers == {
        "Pipeline/Pipeline/Build/Synth/CdkBuildProject/Role/Resource",
        "Pipeline/Pipeline/Role/Resource",
        "Pipeline/Pipeline/Source/example-org_coder-platform-infra/CodePipelineActionRole/Resource",
    }
    # Every step but Synth and the source produces nothing: no output artifact to write.
    (codepipeline,) = pipeline.props("AWS::CodePipeline::Pipeline")
    producing = [a["Name"] for stage in codepipeline["Stages"] for a in stage["Actions"] if a.get("OutputArtifacts")]
    assert producing == ["example-org_coder-platform-infra", "Synth"]


def test_every_pip_install_of_the_pipeline_checks_every_files_hash(pipeline, assembly):
    """Steps after Synth install only files whose hash a committed lock lists; the Synth step runs `make synth`, whose
    runtime install is hash-checked from requirements.lock."""
    installs = []
    for logical_id, spec in _buildspecs(pipeline, assembly).items():
        for command in re.findall(r"pip install[^\"\n]*", spec):
            installs.append(command)
            assert "--require-hashes" in command and "--no-deps" in command, (logical_id, command)
            (lock,) = re.findall(r"-r (\S+)", command)
            assert (ROOT / lock).is_file() and read_lock(ROOT / lock), (logical_id, lock)
    assert len(installs) == 4  # review and smoke, per environment
    synth = [s for s in _buildspecs(pipeline, assembly).values() if '"make synth"' in s]
    assert len(synth) == 1
    recipe = (ROOT / "Makefile").read_text().split("$(PY_STAMP): requirements.lock\n", 1)[1].split("\n\n", 1)[0]
    assert "install --quiet --progress-bar off --no-compile --require-hashes --no-deps -r requirements.lock" in recipe


def test_npm_installs_are_single_immutable_tarballs_of_the_locked_version(pipeline, assembly):
    """Self-mutation and asset publishing install the CDK CLI and cdk-assets with `npm install -g NAME@VERSION`: npm
    checks the tarball against the registry's integrity hash, a version's tarball can never be replaced, and these
    two packages have no dependencies that npm would resolve at install time."""
    packages = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    seen = set()
    for spec in _buildspecs(pipeline, assembly).values():
        for name, version in re.findall(r"npm install -g ([a-z@/-]+)@(\S+?)[\"\n]", spec):
            locked = packages[f"node_modules/{name}"]
            assert version == locked["version"] and locked["integrity"].startswith("sha512-")
            assert not locked.get("dependencies") and not locked.get("optionalDependencies", {}).keys() - {"fsevents"}
            seen.add(name)
    assert seen == {"aws-cdk", "cdk-assets"}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_pins_what_constraints_pins_with_every_files_hash(lock):
    entries = read_lock(ROOT / lock)
    constraints = read_pins(ROOT / "constraints.txt")
    assert entries
    for name, entry in entries.items():
        assert constraints.get(name) == entry.version, f"{lock}: {name}=={entry.version}, constraints.txt: {constraints.get(name)}"
        assert entry.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in entry.hashes), name


def _closure(roots: list[str]) -> set[str]:
    """What installing `roots` brings, for this Python, from the installed distributions' metadata."""
    seen: set[str] = set()
    todo = [canonical(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in map(Requirement, metadata.distribution(name).requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


@pytest.mark.parametrize(("lock", "roots"), [
    ("requirements.lock", list(read_pins(ROOT / "requirements.txt"))),
    ("buildspecs/locks/boto3.txt", ["boto3"]),
])
def test_each_lock_holds_all_its_installs_need(lock, roots):
    """A package missing from a lock fails the hash-checked install: `make lock` after a pin changes."""
    missing = _closure(roots) - set(read_lock(ROOT / lock))
    assert not missing, f"{lock} lacks {sorted(missing)}: run `make lock`"


def test_the_steps_locks_install_on_codebuilds_python_with_their_hashes_checked(tmp_path):
    """pip downloads what the Review and Smoke steps install, for CodeBuild's Python, in hash-checking mode: a listed
    hash that matches no file PyPI serves, or an unlisted file, fails here."""
    for lock in ("buildspecs/locks/boto3.txt",):
        result = subprocess.run(  # the base interpreter's pip: the venvs here are made without one (Makefile)
            [sys._base_executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--require-hashes",
             "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
             "--implementation", "cp", "-d", str(tmp_path / lock.replace("/", "-")), "-r", str(ROOT / lock)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(list((tmp_path / lock.replace("/", "-")).iterdir())) == len(read_lock(ROOT / lock))
