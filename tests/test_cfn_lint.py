"""cfn-lint on every template of the synthesized cloud assembly: no error, no warning outside .cfnlintrc.yaml.
The synth's background job runs it as soon as the assembly is written (tests/synths.py), one process per core."""

from __future__ import annotations


def test_every_template_passes_cfn_lint(assembly, cfn_lint):
    templates = sorted(str(t.path) for t in assembly.templates.values())
    assert len(templates) == 9  # the pipeline stack + Network, Data, Platform and Observability in each Stage
    assert sorted(sum((run["templates"] for run in cfn_lint), [])) == templates
    assert all(run["returncode"] == 0 for run in cfn_lint), "\n".join(run["output"] for run in cfn_lint)
