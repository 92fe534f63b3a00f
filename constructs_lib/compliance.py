"""Acknowledging cdk-nag findings next to the construct they concern, with the reason it is safe.

Every finding is either fixed or acknowledged here with a reason; `make synth` fails on anything else and
`python -m pipeline.compliance` lists each acknowledgment with its reason for the security review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import cdk_nag
from aws_cdk import Acknowledgment, IPolicyValidationPluginBeta1, Validations
from constructs import IConstruct

from constructs_lib.compliance_packs import MIN_REASON_LENGTH, PACK_NAMES, PACKS

_NIST, _HIPAA, _PCI = PACK_NAMES[1:]
# The packs that carry each (unprefixed) rule this project acknowledges, so that a report counts each once.
RULE_PACKS = {
    **dict.fromkeys(
        ("IAMNoInlinePolicy", "CloudWatchLogGroupEncrypted", "S3BucketLoggingEnabled", "S3BucketReplicationEnabled",
         "S3DefaultEncryptionKMS", "S3BucketVersioningEnabled", "VPCNoUnrestrictedRouteToIGW", "LambdaInsideVPC",
         "EC2RestrictedCommonPorts"),
        (_NIST, _HIPAA, _PCI),
    ),
    **dict.fromkeys(
        ("SecretsManagerRotationEnabled", "LambdaConcurrency", "LambdaDLQ", "RDSMultiAZSupport",
         "ElastiCacheRedisClusterAutomaticBackup", "ELBDeletionProtectionEnabled", "RDSEnhancedMonitoringEnabled"),
        (_NIST, _HIPAA),
    ),
    "CodeBuildProjectSourceRepoUrl": (_HIPAA, _PCI),
    "ALBWAFEnabled": (_NIST, _PCI),
}


def compliance_plugins(scope: IConstruct) -> list[IPolicyValidationPluginBeta1]:
    """One cdk-nag plugin per pack of PACKS (register them once, at the App: they reach every Stage)."""
    return [getattr(cdk_nag, pack.checks)(scope) for pack in PACKS]


def acknowledge(scope: IConstruct, reasons: Mapping[str, str]) -> None:
    """`{rule id: reason}` on `scope` and everything below it. A rule id without a pack prefix
    (e.g. "S3BucketReplicationEnabled") is acknowledged in the packs of RULE_PACKS that have it."""
    acknowledgments = []
    if not reasons:
        return
    for rule, reason in reasons.items():
        if len(reason.strip()) < MIN_REASON_LENGTH:
            raise ValueError(f"acknowledgment of {rule} needs a reason that says why this resource is safe")
        for rule_id in _expand(rule):
            acknowledgments.append(Acknowledgment(id=rule_id, reason=reason))
    Validations.of(scope).acknowledge(*acknowledgments)


def _expand(rule: str) -> Iterable[str]:
    if rule.startswith(PACK_NAMES):
        return [rule]
    if rule not in RULE_PACKS:
        raise ValueError(f"{rule}: prefix it with its pack, or list its packs in RULE_PACKS")
    return [f"{pack}-{rule}" for pack in RULE_PACKS[rule]]


def flatten_reference(node: object) -> str:
    """cdk-nag's flattenCfnReference: how a policy resource appears in an AwsSolutions-IAM5 finding id."""
    import json

    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(flatten_reference(item) for item in items)
        if "Fn::Sub" in node:
            return flatten_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_reference(resource)}.{flatten_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def wildcard_findings(policy_document: dict) -> list[str]:
    """The AwsSolutions-IAM5 finding ids a resolved policy document produces (cdk-nag's analyzePolicy)."""
    found: list[str] = []
    for statement in policy_document.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        for action in actions if isinstance(actions, list) else [actions]:
            if "*" in action:
                found.append(f"Action::{action}")
        resources = statement.get("Resource", [])
        for resource in resources if isinstance(resources, list) else [resources]:
            flat = flatten_reference(resource)
            if "*" in flat:
                found.append(f"Resource::{flat}")
    return list(dict.fromkeys(found))
