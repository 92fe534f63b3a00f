"""The test run's background synths (tests/synths.py): started once whoever asks, their outcome reaches every
waiting test, a failure is reported rather than waited on."""

from __future__ import annotations

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
