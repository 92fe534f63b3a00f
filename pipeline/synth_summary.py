"""Summarise a synthesized cloud assembly: stacks, resources per stack, cdk-nag findings per pack.

    python -m pipeline.synth_summary cdk.out [--report-only]

Exit status: 1 when the assembly holds an open compliance finding (unless --report-only) or another error (for
example an annotation error such as a context lookup that needs credentials). `make synth` runs it blocking.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from config.markers import EXAMPLE_VALUE
from constructs_lib.compliance_packs import PACK_NAMES as COMPLIANCE_PACKS
from pipeline.assembly import violations
from pipeline.compliance import read_acknowledgments, stage_names


@dataclass(frozen=True)
class StackSummary:
    path: str  # the stack's construct path, e.g. CoderPipeline/Staging/Network
    stack_name: str
    template: Path
    resources: Counter


@dataclass(frozen=True)
class Finding:
    pack: str
    rule: str
    construct_path: str
    severity: str = "error"
    description: str = ""

    @property
    def blocking(self) -> bool:
        return self.severity == "error"


def iter_stacks(assembly_dir: Path):
    """Every CloudFormation stack of the assembly and its nested (Stage) assemblies."""
    manifest = json.loads((assembly_dir / "manifest.json").read_text())
    for artifact_id, artifact in manifest.get("artifacts", {}).items():
        props = artifact.get("properties", {})
        if artifact["type"] == "cdk:cloud-assembly":
            yield from iter_stacks(assembly_dir / props["directoryName"])
        elif artifact["type"] == "aws:cloudformation:stack":
            template_path = assembly_dir / props["templateFile"]
            template = json.loads(template_path.read_text())
            resources = Counter(r["Type"] for r in template.get("Resources", {}).values())
            path = artifact.get("displayName", artifact_id)
            yield StackSummary(path, props.get("stackName", artifact_id), template_path, resources)


def read_findings(assembly_dir: Path) -> list[Finding]:
    return [
        Finding(plugin, violation["ruleName"], construct_path, violation.get("severity", "error"),
                violation.get("description", ""))
        for plugin, violation, construct_path in violations(assembly_dir)
    ]


def count_acknowledgments(assembly_dir: Path) -> Counter:
    """Acknowledged rules per pack, read from every stack's metadata (the compliance report's reader)."""
    return Counter(entry.pack for entry in read_acknowledgments(assembly_dir, stage_names(assembly_dir)))


def render(stacks: list[StackSummary], findings: list[Finding], acknowledged: Counter, report_only: bool) -> str:
    lines = [f"Stacks ({len(stacks)}):"]
    width = max((len(s.stack_name) for s in stacks), default=10)
    for stack in stacks:
        top = ", ".join(f"{t.split('::', 1)[1]} {n}" for t, n in stack.resources.most_common(4))
        lines.append(f"  {stack.stack_name:<{width}}  {sum(stack.resources.values()):>4} resources  ({top}, ...)")
    by_pack = Counter(f.pack for f in findings)
    mode = "report-only" if report_only else "blocking"
    lines.append(f"cdk-nag findings ({mode}):")
    for pack in COMPLIANCE_PACKS:
        lines.append(f"  {pack:<16} open {by_pack.get(pack, 0):>4}   acknowledged {acknowledged.get(pack, 0):>4}")
    others = Counter(f.pack for f in findings if f.pack not in COMPLIANCE_PACKS and f.blocking)
    for plugin, count in sorted(others.items()):
        lines.append(f"  {plugin:<16} errors {count:>4}  (not a compliance pack: always fails the build)")
    examples = [f for f in findings if f.rule == f"Annotation::{EXAMPLE_VALUE}"]
    if examples:
        lines.append(f"Example values still in the config ({len(examples)}; the pipeline refuses to deploy what has one):")
        lines += [f"  WARN {f.description.split(' is an example value')[0]}" for f in examples]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assembly", type=Path, help="cloud assembly directory (cdk.out)")
    parser.add_argument("--report-only", action="store_true", help="count compliance findings without failing")
    args = parser.parse_args(argv)
    if not (args.assembly / "manifest.json").exists():
        print(f"error: {args.assembly} is not a cloud assembly (no manifest.json); run cdk synth first", file=sys.stderr)
        return 2
    stacks = list(iter_stacks(args.assembly))
    findings = read_findings(args.assembly)
    print(render(stacks, findings, count_acknowledgments(args.assembly), args.report_only))
    other_errors = [f for f in findings if f.pack not in COMPLIANCE_PACKS and f.blocking]
    for finding in other_errors:
        print(f"error: {finding.pack} {finding.rule} at {finding.construct_path}", file=sys.stderr)
    open_findings = [f for f in findings if f.pack in COMPLIANCE_PACKS]
    if other_errors or (open_findings and not args.report_only):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
