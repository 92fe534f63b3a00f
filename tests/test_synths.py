"""The test run's background synths (tests/synths.py): started once whoever asks, their outcome reaches every
waiting test, a failure is reported rather than waited on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.synths import Synths


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
    with pytest.raises(RuntimeError, match="synth cdk's job ended without a result"):
        Synths(tmp_path).result("cdk")  # another worker, which cannot reap the job
    assert time.monotonic() - started < 5
    synths.finish(interrupted=False)
