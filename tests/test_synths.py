"""The test run's background synths (tests/synths.py): started once whoever asks, their outcome (and cfn-lint's)
reaches every waiting test, a failure is reported rather than waited on."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.synths import Synths, cfn_lint


def test_a_synth_starts_once_and_its_failure_reaches_whoever_waits(tmp_path):
    first, second = Synths(tmp_path), Synths(tmp_path)  # two xdist workers of one run
    first.start("no-such-synth")
    second.start("no-such-synth")
    assert len(first.started) + len(second.started) == 1
    result = second.result("no-such-synth")  # the other worker's job, read through the shared directory
    assert result.returncode == -1 and "unknown synth 'no-such-synth'" in result.stderr
    with pytest.raises(AssertionError, match="cdk synth failed"):
        first.assembly_directory("no-such-synth")
    first.finish(interrupted=False)
    assert all(process.returncode is not None for process in first.started)


def test_a_job_killed_before_its_result_fails_the_wait_at_once(tmp_path):
    synths = Synths(tmp_path)
    synths.start("cdk")
    (job,) = synths.started
    os.killpg(job.pid, signal.SIGKILL)  # the job, the CLI and the app: nothing writes result.json
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="synth cdk's job ended without result.json"):
        Synths(tmp_path).result("cdk")  # another worker, which cannot reap the job
    assert time.monotonic() - started < 5
    synths.finish(interrupted=False)


def test_lint_of_a_failed_synth_fails_whoever_waits(tmp_path):
    synths = Synths(tmp_path)
    synths.start("no-such-synth", lint=True)
    with pytest.raises(AssertionError, match="cfn-lint did not run: synth no-such-synth failed"):
        Synths(tmp_path).lint_runs("no-such-synth")
    synths.finish(interrupted=False)


def test_cfn_lint_reports_a_bad_template_with_its_rule(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"Bad": {
        "type": "aws:cloudformation:stack", "properties": {"templateFile": "Bad.template.json"}}}}))
    (tmp_path / "Bad.template.json").write_text(json.dumps(
        {"Resources": {"Logs": {"Type": "AWS::S3::Bucket", "Properties": {"BucketNam": "logs"}}}}))
    (run,) = cfn_lint(tmp_path)
    assert run["templates"] == [str(tmp_path / "Bad.template.json")]
    assert run["returncode"] != 0
    assert "E3002" in run["output"] and "BucketNam" in run["output"]
