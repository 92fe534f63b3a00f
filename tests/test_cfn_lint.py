"""cfn-lint on every template of the synthesized cloud assembly: no error, no warning outside .cfnlintrc.yaml."""

from __future__ import annotations

import os
import subprocess

from tests.assembly import ROOT
from tests.synths import tool_env


def test_every_template_passes_cfn_lint(assembly):
    templates = sorted(str(t.path) for t in assembly.templates.values())
    assert len(templates) == 9  # the pipeline stack + Network, Data, Platform and Observability in each Stage
    # One cfn-lint process per core, each on its share of the templates.
    shares = [templates[i::os.cpu_count() or 1] for i in range(min(os.cpu_count() or 1, len(templates)))]
    processes = [
        subprocess.Popen(["cfn-lint", "--config-file", str(ROOT / ".cfnlintrc.yaml"), "--", *share], cwd=ROOT,
                         env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for share in shares
    ]
    outputs = [(process.communicate(timeout=600)[0], process.returncode) for process in processes]
    assert sorted(sum(shares, [])) == templates
    assert all(code == 0 for _, code in outputs), "\n".join(output for output, _ in outputs)
