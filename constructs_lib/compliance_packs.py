"""The cdk-nag packs every synth checks: one list, read by the app (plugins), the synth summary and the compliance
report. Standard library only: the report runs in CodeBuild without the CDK installed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pack:
    name: str  # the rule-id prefix cdk-nag reports (`AwsSolutions-IAM5`)
    checks: str  # the cdk_nag class that runs it


PACKS: tuple[Pack, ...] = (
    Pack("AwsSolutions", "AwsSolutionsChecks"),
    Pack("NIST.800.53.R5", "NIST80053R5Checks"),
    Pack("HIPAA.Security", "HIPAASecurityChecks"),
    Pack("PCI.DSS.321", "PCIDSS321Checks"),
)
PACK_NAMES: tuple[str, ...] = tuple(pack.name for pack in PACKS)
# An acknowledgment's reason says why this resource is safe: shorter than this, it cannot (refused at synth,
# failed by the report).
MIN_REASON_LENGTH = 20
