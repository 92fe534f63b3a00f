"""One real `cdk synth` (the CDK CLI, the pinned Node.js, the app's cdk.json) per test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from config.loader import load_config
from tests.assembly import ROOT, Assembly

STAGES = ("Staging", "Production")


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(ROOT / ".venv" / "bin"), env["PATH"]])
    return env


def cdk_synth(outdir: Path) -> None:
    """Run the pinned CDK CLI exactly as `make synth` does (compliance findings reported, not blocking)."""
    result = subprocess.run(
        ["cdk", "synth", "--quiet", "--ignore-errors", "--output", str(outdir)],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise AssertionError(f"cdk synth failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-5000:]}")


@pytest.fixture(scope="session")
def assembly(tmp_path_factory) -> Assembly:
    outdir = tmp_path_factory.mktemp("cdk") / "cdk.out"
    cdk_synth(outdir)
    return Assembly.load(outdir)


@pytest.fixture(scope="session")
def app_config():
    return load_config()


@pytest.fixture(params=STAGES)
def stage(request) -> str:
    return request.param


@pytest.fixture
def env_config(app_config, stage):
    return app_config.staging if stage == "Staging" else app_config.production
