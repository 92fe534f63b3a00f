"""cfn-lint on every template of the synthesized cloud assembly: no error, no warning outside .cfnlintrc.yaml."""

from __future__ import annotations

import subprocess

from tests.assembly import ROOT
from tests.conftest import tool_env


def test_every_template_passes_cfn_lint(assembly):
    templates = sorted(str(t.path) for t in assembly.templates.values())
    assert len(templates) == 9  # the pipeline stack + Network, Data, Platform and Observability in each Stage
    result = subprocess.run(
        ["cfn-lint", "--config-file", str(ROOT / ".cfnlintrc.yaml"), "--", *templates],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
