"""Security-review report of a synthesized cloud assembly: every cdk-nag finding and every acknowledgment.

    python -m pipeline.compliance --assembly cdk.out --junit FILE --markdown FILE [--json FILE] [--stage NAME]

Reads `validation-report.json` (open findings: pack, rule, resource path) and each stack's metadata
(`aws:cdk:acknowledged-rules`: rule, the construct it was acknowledged on, reason), groups them per stage and stack,
and writes them as JUnit (one testcase per rule and resource; acknowledged ones pass and carry their reason),
Markdown (a per-pack summary table first) and optionally JSON. `--stage Staging` keeps one Stage (the pipeline's
pre-step); the pipeline stack itself is reported as stage "Pipeline".

It also fails the stage on each example value left in the config (synth warns about them with the id
`coder:example-value`): the pipeline refuses to deploy an environment whose account, domain or Azure AD ids are still
the shipped examples, and names each field.

Exit status: 0 when nothing is open, every acknowledgment has a reason and no example value is left; 1 otherwise; 2
for bad arguments or an assembly that cannot be read. Standard library only: it runs in CodeBuild without installing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree

from config.markers import EXAMPLE_VALUE
from constructs_lib.compliance_packs import MIN_REASON_LENGTH
from constructs_lib.compliance_packs import PACK_NAMES as PACKS
from pipeline.assembly import PIPELINE_STAGE, AssemblyError, markdown_cell, read_json, stage_name, violations

ACKNOWLEDGED_RULES = "aws:cdk:acknowledged-rules"


@dataclass(frozen=True)
class Entry:
    stage: str
    stack: str
    pack: str
    rule: str
    path: str  # construct path below the stack (the resource, or the scope an acknowledgment was made on)
    status: str  # "open" or "acknowledged"
    detail: str  # the rule's description (open) or the acknowledgment's reason

    @property
    def reason_missing(self) -> bool:
        return self.status == "acknowledged" and len(self.detail.strip()) < MIN_REASON_LENGTH


def pack_of(rule: str) -> str:
    for pack in PACKS:
        if rule.startswith(f"{pack}-"):
            return pack
    return rule.split("-", 1)[0] if "-" in rule else "other"


def split_path(construct_path: str, stages: set[str]) -> tuple[str, str, str]:
    """'CoderPipeline/Staging/Network/Vpc/Resource' -> ('Staging', 'Network', 'Vpc/Resource');
    'CoderPipeline/Pipeline/...' (the pipeline stack) -> ('Pipeline', 'CoderPipeline', 'Pipeline/...')."""
    parts = construct_path.strip("/").split("/")
    if len(parts) >= 3 and parts[1] in stages:
        return parts[1], parts[2], "/".join(parts[3:])
    return PIPELINE_STAGE, parts[0], "/".join(parts[1:])


def stage_names(assembly: Path) -> set[str]:
    manifest = read_json(assembly / "manifest.json")
    return {stage_name(a) for a in manifest.get("artifacts", {}).values() if a.get("type") == "cdk:cloud-assembly"}


def read_findings(assembly: Path, stages: set[str]) -> list[Entry]:
    entries = []
    for _plugin, violation, construct_path in violations(assembly):
        stage, stack, path = split_path(construct_path, stages)
        rule = violation["ruleName"]
        entries.append(Entry(stage, stack, pack_of(rule), rule, path, "open", violation.get("description", "")))
    return entries


def read_example_values(assembly: Path, stage: str | None) -> list[str]:
    """The example values left in the config for `stage` (every stage and the pipeline when None), as synth named
    them: `staging.account = '222222222222'`."""
    stages = stage_names(assembly)
    found = {
        violation.get("description", "").split(" is an example value")[0]
        for _plugin, violation, construct_path in violations(assembly)
        if violation.get("ruleName") == f"Annotation::{EXAMPLE_VALUE}"
        and (stage is None or split_path(construct_path, stages)[0] == stage)
    }
    return sorted(found)


def _metadata_files(assembly: Path) -> Iterable[Path]:
    yield from sorted(assembly.rglob("*.metadata.json"))


def read_acknowledgments(assembly: Path, stages: set[str]) -> list[Entry]:
    entries = []
    for metadata_file in _metadata_files(assembly):
        for construct_path, items in read_json(metadata_file).items():
            for item in items:
                if item.get("type") != ACKNOWLEDGED_RULES:
                    continue
                data = item.get("data") or {}
                pairs = data.items() if isinstance(data, dict) else ((str(d), "") for d in data)
                for raw_id, reason in pairs:
                    rule = raw_id.split("::", 1)[1] if "::" in raw_id else raw_id
                    stage, stack, path = split_path(construct_path, stages)
                    entries.append(Entry(stage, stack, pack_of(rule), rule, path or "(stack)", "acknowledged", str(reason or "")))
    return entries


def load(assembly: Path, stage: str | None = None) -> list[Entry]:
    if not (assembly / "manifest.json").exists():
        raise AssemblyError(f"{assembly}: no manifest.json (is this a cloud assembly? run `make synth` first)")
    stages = stage_names(assembly)
    entries = read_findings(assembly, stages) + read_acknowledgments(assembly, stages)
    entries = [e for e in entries if e.pack in PACKS]  # other plugins are not compliance packs
    if stage is not None:
        known = sorted(stages | {PIPELINE_STAGE})
        by_lower = {name.lower(): name for name in known}  # case-insensitive, as pipeline.changes --stage
        if stage.lower() not in by_lower:
            raise AssemblyError(f"stage {stage!r} is not in the assembly (stages: {', '.join(known)})")
        entries = [e for e in entries if e.stage == by_lower[stage.lower()]]
    return sorted(entries, key=lambda e: (e.stage, e.stack, e.pack, e.rule, e.path, e.status))


def summary(entries: Sequence[Entry]) -> dict[str, dict[str, int]]:
    counts = {pack: {"open": 0, "acknowledged": 0} for pack in PACKS}
    for entry in entries:
        counts[entry.pack][entry.status] += 1
    return counts


def write_junit(path: Path, entries: Sequence[Entry], examples: Sequence[str] = ()) -> None:
    failures = sum(e.status == "open" or e.reason_missing for e in entries) + len(examples)
    root = ElementTree.Element(
        "testsuites", name="compliance", tests=str(len(entries) + len(examples)), failures=str(failures)
    )
    if examples:
        suite = ElementTree.SubElement(root, "testsuite", name="config/example values", tests=str(len(examples)),
                                       failures=str(len(examples)), errors="0")
        for example in examples:
            case = ElementTree.SubElement(suite, "testcase", classname="config.example-values", name=example)
            ElementTree.SubElement(case, "failure", message="an example value: set the real one before deploying",
                                   type=EXAMPLE_VALUE).text = example
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.stage, entry.stack), []).append(entry)
    for (stage, stack), group in groups.items():
        suite = ElementTree.SubElement(
            root, "testsuite", name=f"{stage}/{stack}", tests=str(len(group)),
            failures=str(sum(e.status == "open" or e.reason_missing for e in group)), errors="0",
        )
        for entry in group:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"{stage}.{stack}.{entry.pack}", name=f"{entry.rule} {entry.path}"
            )
            if entry.status == "open":
                ElementTree.SubElement(case, "failure", message=f"open finding: {entry.detail}", type=entry.rule).text = (
                    f"{entry.rule} at {stage}/{stack}/{entry.path}: {entry.detail}"
                )
            elif entry.reason_missing:
                ElementTree.SubElement(case, "failure", message="acknowledged without a reason", type=entry.rule)
            else:
                ElementTree.SubElement(case, "system-out").text = f"acknowledged: {entry.detail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def render_markdown(entries: Sequence[Entry], title: str, examples: Sequence[str] = ()) -> str:
    counts = summary(entries)
    lines = [f"# {title}", "", "| pack | open | acknowledged |", "| --- | ---: | ---: |"]
    for pack in PACKS:
        lines.append(f"| {pack} | {counts[pack]['open']} | {counts[pack]['acknowledged']} |")
    missing = [e for e in entries if e.reason_missing]
    total_open = sum(c["open"] for c in counts.values())
    verdict = "PASS" if not total_open and not missing and not examples else "FAIL"
    lines += ["", f"**{verdict}**: {total_open} open finding(s), {len(missing)} acknowledgment(s) without a reason, "
              f"{len(examples)} example value(s) left in the config.", ""]
    if examples:
        lines += ["## Example values left in the config (nothing deploys until they are replaced)", ""]
        lines += [f"- `{markdown_cell(example)}`" for example in examples]
        lines.append("")
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.stage, entry.stack), []).append(entry)
    for (stage, stack), group in groups.items():
        lines += [f"## {stage} / {stack}", ""]
        open_entries = [e for e in group if e.status == "open"]
        if open_entries:
            lines += ["### Open findings", "", "| pack | rule | resource | description |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {e.pack} | `{markdown_cell(e.rule)}` | `{markdown_cell(e.path)}` | {markdown_cell(e.detail)} |"
                for e in open_entries
            ]
            lines.append("")
        acknowledged = [e for e in group if e.status == "acknowledged"]
        if acknowledged:
            lines += ["### Acknowledged", "", "| pack | rule | on | reason |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {e.pack} | `{markdown_cell(e.rule)}` | `{markdown_cell(e.path)}` | {markdown_cell(e.detail) or '**(no reason)**'} |"
                for e in acknowledged
            ]
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compliance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assembly", type=Path, required=True, help="the cloud assembly directory (cdk.out)")
    parser.add_argument("--junit", type=Path, help="write the JUnit XML report here (CodeBuild Reports)")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--stage", help="report one Stage only (e.g. Staging; 'Pipeline' for the pipeline stack)")
    args = parser.parse_args(argv)
    try:
        entries = load(args.assembly, args.stage)
    except AssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    examples = read_example_values(args.assembly, args.stage)
    title = f"Compliance report: {args.stage or 'all stages'}"
    if args.junit:
        write_junit(args.junit, entries, examples)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(entries, title, examples))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary(entries), "entries": [asdict(e) for e in entries],
                                         "example_values": examples}, indent=2))

    counts = summary(entries)
    open_count = sum(c["open"] for c in counts.values())
    missing_count = sum(e.reason_missing for e in entries)
    print(f"{title}: {open_count} open, {sum(c['acknowledged'] for c in counts.values())} acknowledged"
          f"{f', {missing_count} without a reason' if missing_count else ''}"
          f"{f', {len(examples)} example values' if examples else ''}")
    for pack in PACKS:
        print(f"  {pack:<16} open {counts[pack]['open']:4}   acknowledged {counts[pack]['acknowledged']:4}")
    open_entries = [e for e in entries if e.status == "open"]
    missing = [e for e in entries if e.reason_missing]
    for entry in open_entries[:50]:
        print(f"open: {entry.rule} at {entry.stage}/{entry.stack}/{entry.path}")
    for entry in missing:
        print(f"no reason: {entry.rule} acknowledged on {entry.stage}/{entry.stack}/{entry.path}")
    for example in examples:
        print(f"example value: {example} (set the real value before this deploys)")
    return 1 if open_entries or missing or examples else 0


if __name__ == "__main__":
    sys.exit(main())
