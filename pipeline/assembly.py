"""Reading a synthesized cloud assembly: what the compliance report, the release review and the synth summary share.

Standard library only: the pipeline's compliance and review steps import it without installing anything for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

PIPELINE_STAGE = "Pipeline"  # how the reports name the pipeline stack's own "stage"


class AssemblyError(Exception):
    """An assembly file that is missing or unreadable: the tools report it as one line and exit 2."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AssemblyError(f"{path}: not found (is this a cloud assembly? run `make synth` first)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise AssemblyError(f"{path}: {error}") from None


def stage_name(artifact: dict) -> str:
    """The Stage name of a nested assembly artifact: 'CoderPipeline/Staging' or 'assembly-CoderPipeline-Staging' ->
    'Staging'."""
    return (artifact.get("displayName") or artifact["properties"]["directoryName"].split("-")[-1]).split("/")[-1]


def violations(assembly: Path) -> Iterator[tuple[str, dict, str]]:
    """(plugin name, violation, construct path) for each construct a validation plugin (cdk-nag, the example-value
    annotations) reported in `validation-report.json`; nothing when no plugin reported anything."""
    report_path = assembly / "validation-report.json"
    if not report_path.exists():
        return
    for plugin in read_json(report_path).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for construct in violation.get("violatingConstructs", []):
                yield plugin.get("pluginName", "?"), violation, construct.get("constructPath", "?")


def markdown_cell(text: str) -> str:
    """`text` as one Markdown table cell: pipes escaped, on one line."""
    return text.replace("|", "\\|").replace("\n", " ")
