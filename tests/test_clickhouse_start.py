"""ClickHouse's start script (constructs_lib/scripts/clickhouse-start.sh): the task runs exactly that file, and the real
POSIX shell running it writes a server configuration that bounds the system log tables, then hands over to the
image's entrypoint (here a stand-in that records how it was called)."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ElementTree

from tests.assembly import ROOT

SCRIPT = ROOT / "constructs_lib" / "scripts" / "clickhouse-start.sh"
# Langfuse's scaling guide: the tables Langfuse never reads, which grow without bound (trace_log all the time).
REMOVED = {"trace_log", "text_log", "opentelemetry_span_log", "asynchronous_metric_log", "metric_log", "latency_log"}


def test_the_clickhouse_task_runs_the_script_file_before_the_images_entrypoint(assembly, stage):
    observability = assembly.stack(stage, "Observability")
    task = observability.resources[observability.logical_id("/Observability/ClickHouse/Service/TaskDefinition/Resource")]
    (server,) = [c for c in task["Properties"]["ContainerDefinitions"] if c["Name"] == "clickhouse"]
    assert server["EntryPoint"] == ["sh", "-c"]
    assert server["Command"] == [SCRIPT.read_text()]
    assert server["Essential"] is True


def _run(tmp_path) -> tuple[subprocess.CompletedProcess, os.PathLike]:
    config_d = tmp_path / "config.d"
    record = tmp_path / "entrypoint.txt"
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text(f'#!/bin/sh\nprintf "%s\\n" "args:$#" "password:$CLICKHOUSE_PASSWORD" > {record}\n')
    entrypoint.chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", SCRIPT.read_text()],
        env={"PATH": os.environ["PATH"], "CLICKHOUSE_CONFIG_D": str(config_d), "CLICKHOUSE_ENTRYPOINT": str(entrypoint),
             "CLICKHOUSE_PASSWORD": "from-secrets-manager"},
        capture_output=True, text=True, timeout=30,
    )
    return result, record


def test_the_script_bounds_the_system_logs_and_starts_the_images_entrypoint(tmp_path):
    result, record = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    (written,) = (tmp_path / "config.d").iterdir()
    root = ElementTree.parse(written).getroot()
    assert root.tag == "clickhouse"  # ClickHouse merges only files whose root is <clickhouse>
    assert {child.tag for child in root if child.get("remove") == "1"} == REMOVED
    kept = {child.tag: child for child in root if child.get("remove") is None}
    assert set(kept) == {"query_log", "part_log"}
    for table in kept.values():
        # a `ttl` merged into the image's settings (no `engine`, which would clash with its partition_by)
        assert [child.tag for child in table] == ["ttl"]
        assert table.findtext("ttl") == "event_date + INTERVAL 30 DAY DELETE"
    # exec'd: the image's entrypoint runs with the container's environment, and no arguments of ours
    assert record.read_text().splitlines() == ["args:0", "password:from-secrets-manager"]


def test_the_server_does_not_start_when_the_configuration_cannot_be_written(tmp_path):
    (tmp_path / "config.d").write_text("a file where the directory should be")
    result, record = _run(tmp_path)
    assert result.returncode != 0
    assert not record.exists()
