"""What a release changes, stack by stack, and whether it would destroy data.

    python -m pipeline.changes --base BASE --assembly NEW [--stage NAME] [--config FILE]
                               [--markdown F] [--junit F] [--json F] [--notify TOPIC_ARN]

NEW is a cloud assembly (cdk.out). BASE is another one (e.g. synthesized from an older commit), or `deployed`: each
stack's current template, read with cloudformation:GetTemplate through its environment's CDK bootstrap lookup role
(its ARN is in NEW's manifest; the role is read-only and trusts the pipeline account after `cdk bootstrap --trust`).
A stack that does not exist yet is all additions. Stacks are matched by account, region and name.

For each stack: resources added, removed and changed; for a changed one, the properties that changed and whether
CloudFormation replaces it (from CloudFormation's own resource schemas, `createOnlyProperties`, as cfn-lint ships
them), following replacements through references, within a stack and across the stacks of a stage (a stack's output
read with Fn::GetStackOutput): "may be replaced" where it cannot be known offline. IAM statements
and security-group rules added or removed are rows of their own. Replacing or removing a stateful resource (database,
cache, file system, bucket, table, secret, key, backup vault), a renamed one included, blocks, unless the environment
allows that change in the config (`allowed_changes`, with a reason).

With `--drift` (and `--base deployed`): CloudFormation's drift detection runs on every deployed stack, through the same
lookup role (its ReadOnlyAccess includes cloudformation:Detect* and the reads the detection makes); a stack not
deployed yet has no drift. Drift on a stateful resource, or on one this release changes, blocks unless the environment
allows it (`allowed_drift`, with a reason): the deploy would overwrite a difference nobody has looked at. Other drift is
reported. The report names the drifted properties, not their values (a value may be anything, a credential included).

Exit status: 0 nothing blocking; 1 something blocking (listed); 2 bad input (unreadable assembly, unknown stage, no
credentials, an AWS error), one line, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from pipeline.assembly import PIPELINE_STAGE, AssemblyError, markdown_cell, read_json, stage_name
from pipeline.resource_schemas import create_only

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "environments.toml"
STATEFUL_TYPES = frozenset({
    "AWS::RDS::DBInstance", "AWS::RDS::DBCluster", "AWS::ElastiCache::ReplicationGroup", "AWS::EFS::FileSystem",
    "AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SecretsManager::Secret", "AWS::KMS::Key",
    "AWS::Backup::BackupVault",
})
IGNORED_TYPES = frozenset({"AWS::CDK::Metadata"})
# Where templates hold policies: IAM and resource policies, key policies, role trust, EFS file system policies.
POLICY_PROPERTIES = ("PolicyDocument", "KeyPolicy", "AssumeRolePolicyDocument", "FileSystemPolicy")
RULE_TYPES = {"AWS::EC2::SecurityGroupIngress": "ingress", "AWS::EC2::SecurityGroupEgress": "egress"}


class ReviewError(AssemblyError):
    """Bad input: reported as one line, exit 2 (as an unreadable assembly is)."""


@dataclass(frozen=True)
class StackTemplate:
    stage: str
    name: str
    account: str
    region: str
    template: dict
    lookup_role: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.account, self.region, self.name)


@dataclass
class Change:
    stage: str
    stack: str
    logical_id: str
    type: str
    action: str  # add, remove, modify
    properties: list[str] = field(default_factory=list)
    replacement: str = "no"  # no, yes, maybe
    stateful: bool = False
    allowed: str | None = None  # the config's reason, when an allowance covers this change

    @property
    def destructive(self) -> bool:
        return self.stateful and (self.action == "remove" or self.replacement in ("yes", "maybe"))

    @property
    def blocking(self) -> bool:
        return self.destructive and self.allowed is None


@dataclass(frozen=True)
class Row:
    """An IAM statement or a security-group rule added (+) or removed (-)."""

    stage: str
    stack: str
    kind: str  # iam, network
    sign: str
    logical_id: str
    text: str


@dataclass
class Drift:
    """A deployed resource that differs from its deployed template (CloudFormation drift detection)."""

    stage: str
    stack: str
    logical_id: str
    type: str
    status: str  # MODIFIED or DELETED
    properties: list[str] = field(default_factory=list)  # "path (difference type)"
    stateful: bool = False
    changed: bool = False  # this release changes, replaces or removes the resource
    allowed: str | None = None  # the config's reason, when an allowance covers it

    @property
    def blocking(self) -> bool:
        return (self.stateful or self.changed) and self.allowed is None


@dataclass
class Review:
    changes: list[Change]
    rows: list[Row]
    unused_allowances: list[str]
    drifts: list[Drift] | None = None  # None: drift was not detected
    drift_notes: list[str] = field(default_factory=list)  # stacks whose detection finished with a reason

    def counts(self) -> dict[str, int]:
        counts = {
            "added": sum(c.action == "add" for c in self.changes),
            "removed": sum(c.action == "remove" for c in self.changes),
            "changed": sum(c.action == "modify" for c in self.changes),
            "replaced": sum(c.replacement in ("yes", "maybe") for c in self.changes),
            "blocking": sum(c.blocking for c in self.changes) + sum(d.blocking for d in self.drifts or ()),
        }
        if self.drifts is not None:
            counts["drifted"] = len(self.drifts)
        return counts

    def summary(self, scope: str) -> str:
        counts = self.counts()
        blocking = [f"{c.stack}/{c.logical_id}" for c in self.changes if c.blocking]
        blocking += [f"{d.stack}/{d.logical_id} (drift)" for d in self.drifts or () if d.blocking]
        drifted = f", {counts['drifted']} drifted" if self.drifts is not None else ""
        return (f"{scope}: {counts['added']} added, {counts['changed']} changed, {counts['removed']} removed, "
                f"{counts['replaced']} replaced{drifted}, blocking: {', '.join(blocking) or 'none'}")


# --- reading assemblies and deployed stacks -----------------------------------------------------------------------


def read_assembly(directory: Path, stage: str = PIPELINE_STAGE) -> list[StackTemplate]:
    manifest = read_json(directory / "manifest.json")
    stacks = []
    for artifact_id, artifact in manifest.get("artifacts", {}).items():
        props = artifact.get("properties", {})
        if artifact["type"] == "cdk:cloud-assembly":
            stacks += read_assembly(directory / props["directoryName"], stage_name(artifact))
        elif artifact["type"] == "aws:cloudformation:stack":
            account, region = artifact["environment"].removeprefix("aws://").split("/")
            role = (props.get("lookupRole") or {}).get("arn")
            stacks.append(StackTemplate(stage, props.get("stackName", artifact_id), account, region,
                                        read_json(directory / props["templateFile"]), role))
    return stacks


class LookupClients:
    """CloudFormation clients of each stack's environment, through its lookup role (one assumed session per role)."""

    def __init__(self, session_factory=None) -> None:
        import boto3

        self._make_session = session_factory or boto3.session.Session
        self._base = self._make_session()
        self._sessions: dict[str, object] = {}

    def role(self, stack: StackTemplate) -> str:
        if not stack.lookup_role:
            raise ReviewError(f"{stack.name}: the assembly names no lookup role (was it synthesized by cdk synth?)")
        return stack.lookup_role.replace("${AWS::Partition}", "aws").replace("${AWS::Region}", stack.region)

    def cloudformation(self, stack: StackTemplate):
        role = self.role(stack)
        if role not in self._sessions:
            credentials = self._base.client("sts", region_name=stack.region).assume_role(
                RoleArn=role, RoleSessionName="release-review")["Credentials"]
            self._sessions[role] = self._make_session(
                aws_access_key_id=credentials["AccessKeyId"], aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"], region_name=stack.region)
        return self._sessions[role].client("cloudformation", region_name=stack.region)


@contextlib.contextmanager
def _aws_errors(stack: StackTemplate, role: str):
    """AWS failures as one ReviewError line naming the stack and the role."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise ReviewError("no AWS credentials: run with the pipeline account's credentials") from None
    except (ClientError, BotoCoreError) as error:
        raise ReviewError(f"{stack.name} in {stack.account}/{stack.region} through {role}: {error}") from None


def deployed(stacks: Sequence[StackTemplate], session_factory=None, clients: LookupClients | None = None) -> list[StackTemplate]:
    """The templates now deployed, read through each environment's lookup role; {} for a stack not there yet."""
    from botocore.exceptions import ClientError

    clients = clients or LookupClients(session_factory)
    found = []
    for stack in stacks:
        role = clients.role(stack)
        with _aws_errors(stack, role):
            client = clients.cloudformation(stack)
            try:
                body = client.get_template(StackName=stack.name, TemplateStage="Original")["TemplateBody"]
            except ClientError as error:
                if error.response["Error"]["Code"] == "ValidationError" and "does not exist" in str(error):
                    body = {}
                else:
                    raise
        template = json.loads(body) if isinstance(body, str) else body
        found.append(StackTemplate(stack.stage, stack.name, stack.account, stack.region, template or {}, role))
    return found


# --- drift ----------------------------------------------------------------------------------------------------------

DRIFT_POLL_SECONDS = 5
DRIFT_TIMEOUT_SECONDS = 900  # CloudFormation: "can take up to several minutes" per stack; the stacks run side by side


def detect_drift(
    targets: Sequence[tuple[StackTemplate, object]], *, poll_seconds: float | None = None,
    timeout_seconds: float | None = None, sleep=time.sleep, clock=time.monotonic,
) -> tuple[list[Drift], list[str]]:
    """Drift detection on each (deployed stack, its CloudFormation client), all started before any is waited for.
    Returns the drifted resources (MODIFIED or DELETED) and a note for each stack whose detection ended with a reason
    (DETECTION_FAILED: some resources could not be checked; the others' results still count)."""
    poll_seconds = DRIFT_POLL_SECONDS if poll_seconds is None else poll_seconds
    timeout_seconds = DRIFT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    started = []
    for stack, client in targets:
        with _aws_errors(stack, stack.lookup_role or ""):
            started.append((stack, client, client.detect_stack_drift(StackName=stack.name)["StackDriftDetectionId"]))
    deadline = clock() + timeout_seconds
    drifts: list[Drift] = []
    notes: list[str] = []
    for stack, client, detection in started:
        with _aws_errors(stack, stack.lookup_role or ""):
            while True:
                status = client.describe_stack_drift_detection_status(StackDriftDetectionId=detection)
                if status["DetectionStatus"] != "DETECTION_IN_PROGRESS":
                    break
                if clock() > deadline:
                    raise ReviewError(f"{stack.name}: drift detection still running after {timeout_seconds:.0f} s")
                sleep(poll_seconds)
            if status["DetectionStatus"] == "DETECTION_FAILED":
                notes.append(f"{stack.name}: {status.get('DetectionStatusReason', 'detection failed')}")
            drifts += _resource_drifts(stack, client)
    return drifts, notes


def _resource_drifts(stack: StackTemplate, client) -> list[Drift]:
    found, token = [], None
    while True:
        page = client.describe_stack_resource_drifts(
            StackName=stack.name, StackResourceDriftStatusFilters=["MODIFIED", "DELETED"], **({"NextToken": token} if token else {}))
        for drift in page["StackResourceDrifts"]:
            found.append(Drift(
                stack.stage, stack.name, drift["LogicalResourceId"], drift["ResourceType"], drift["StackResourceDriftStatus"],
                [f"{d['PropertyPath']} ({d['DifferenceType']})" for d in drift.get("PropertyDifferences", [])],
                stateful=drift["ResourceType"] in STATEFUL_TYPES,
            ))
        token = page.get("NextToken")
        if not token:
            return found


def judge_drift(
    drifts: list[Drift], changes: Sequence[Change], allowances: dict[str, list[dict]], stages: Iterable[str]
) -> list[str]:
    """Marks drift on resources this release changes, applies the config's allowances; returns the unused ones."""
    touched = {(c.stack, c.logical_id) for c in changes if c.action in ("modify", "remove")}
    for drift in drifts:
        drift.changed = (drift.stack, drift.logical_id) in touched
    return _allow(drifts, allowances, sorted(set(stages) - {PIPELINE_STAGE}), "has no drift: remove the allowed_drift entry")


# --- what changes -------------------------------------------------------------------------------------------------


def _references(value) -> set[str]:
    """Logical ids a value refers to (Ref, GetAtt, ${...} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            found.add(target[0] if isinstance(target, list) else str(target).split(".")[0])
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    elif isinstance(value, str) and "${" in value:
        found |= {part.split("}")[0].split(".")[0] for part in value.split("${")[1:]}
    return found


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _statements(resource: dict) -> set[str]:
    props = resource.get("Properties", {})
    documents = [props[name] for name in POLICY_PROPERTIES if isinstance(props.get(name), dict)]
    documents += [p.get("PolicyDocument", {}) for p in props.get("Policies", []) if isinstance(p, dict)]
    found = set()
    for document in documents:
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            found.add(_canonical(statement))
    return found


def _sg_rules(resource: dict) -> set[str]:
    props = resource.get("Properties", {})
    if resource.get("Type") == "AWS::EC2::SecurityGroup":
        return {f"{direction} {_canonical(rule)}" for direction in ("Ingress", "Egress")
                for rule in props.get(f"SecurityGroup{direction}", [])}
    if resource.get("Type") in RULE_TYPES:
        return {f"{RULE_TYPES[resource['Type']]} {_canonical(props)}"}
    return set()


def diff_stack(stage: str, stack: str, old: dict, new: dict) -> tuple[list[Change], list[Row]]:
    old_resources = {k: v for k, v in old.get("Resources", {}).items() if v.get("Type") not in IGNORED_TYPES}
    new_resources = {k: v for k, v in new.get("Resources", {}).items() if v.get("Type") not in IGNORED_TYPES}
    changes: dict[str, Change] = {}
    for lid in new_resources.keys() - old_resources.keys():
        kind = new_resources[lid]["Type"]
        changes[lid] = Change(stage, stack, lid, kind, "add", stateful=kind in STATEFUL_TYPES)
    for lid in old_resources.keys() - new_resources.keys():
        kind = old_resources[lid]["Type"]
        changes[lid] = Change(stage, stack, lid, kind, "remove", stateful=kind in STATEFUL_TYPES)
    for lid in old_resources.keys() & new_resources.keys():
        before, after = _strip(old_resources[lid]), _strip(new_resources[lid])
        if before == after:
            continue
        kind = after["Type"]
        old_props, new_props = before.get("Properties", {}), after.get("Properties", {})
        changed = sorted(k for k in old_props.keys() | new_props.keys() if old_props.get(k) != new_props.get(k))
        changed += sorted(k for k in before.keys() | after.keys() if k != "Properties" and before.get(k) != after.get(k))
        replaced = before["Type"] != kind or bool(set(changed) & create_only(kind))
        changes[lid] = Change(stage, stack, lid, kind, "modify", changed, "yes" if replaced else "no", kind in STATEFUL_TYPES)
    _follow_replacements(changes, new_resources, stage, stack)
    rows = []
    for lid in sorted(old_resources.keys() | new_resources.keys()):
        before, after = old_resources.get(lid, {}), new_resources.get(lid, {})
        for kind, read in (("iam", _statements), ("network", _sg_rules)):
            old_items, new_items = read(before), read(after)
            rows += [Row(stage, stack, kind, "+", lid, item) for item in sorted(new_items - old_items)]
            rows += [Row(stage, stack, kind, "-", lid, item) for item in sorted(old_items - new_items)]
    return sorted(changes.values(), key=lambda c: c.logical_id), rows


def _strip(resource: dict) -> dict:
    """A resource without what CDK writes for people (its construct path), which CloudFormation ignores."""
    stripped = json.loads(json.dumps(resource))
    stripped.get("Metadata", {}).pop("aws:cdk:path", None)
    if not stripped.get("Metadata"):
        stripped.pop("Metadata", None)
    return stripped


def _follow_replacements(changes: dict[str, Change], resources: dict, stage: str, stack: str) -> None:
    """A resource whose create-only property refers to a replaced one gets a new value there: it may be replaced."""
    while True:
        replaced = {lid for lid, c in changes.items() if c.replacement in ("yes", "maybe") or c.action == "remove"}
        grew = False
        for lid, resource in resources.items():
            current = changes.get(lid)
            if current is not None and (current.action == "add" or current.replacement in ("yes", "maybe")):
                continue
            kind, props = resource["Type"], resource.get("Properties", {})
            inputs = [name for name in create_only(kind) if _references(props.get(name)) & replaced]
            if not inputs:
                continue
            if current is None:
                current = changes[lid] = Change(stage, stack, lid, kind, "modify", stateful=kind in STATEFUL_TYPES)
            current.properties = sorted(set(current.properties) | {f"{name} (refers to a replaced resource)" for name in inputs})
            current.replacement = "maybe"
            grew = True
        if not grew:
            return


# --- allowances -----------------------------------------------------------------------------------------------------


def _per_environment(config: Path, key: str) -> dict[str, list[dict]]:
    """{environment name: its `key` entries ([{stack, logical_id, reason}])} from the config file (validated at synth)."""
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ReviewError(f"{config}: {error}") from None
    return {e.get("name", ""): list(e.get(key, [])) for e in data.get("environments", [])}


def read_allowances(config: Path) -> dict[str, list[dict]]:
    """`allowed_changes` of each environment."""
    return _per_environment(config, "allowed_changes")


def read_drift_allowances(config: Path) -> dict[str, list[dict]]:
    """`allowed_drift` of each environment."""
    return _per_environment(config, "allowed_drift")


def _allow(items: Sequence[Change | Drift], allowances: dict[str, list[dict]], stages: Iterable[str],
           unmatched: str) -> list[str]:
    """Marks each item an environment's allowance names (its stack and logical id) as allowed, with the reason;
    returns a line for each allowance that names none, ending with `unmatched`."""
    unused = []
    for stage in stages:
        for allowance in allowances.get(stage.lower(), []):
            stack = f"{stage}-{allowance['stack']}"
            matched = [i for i in items if i.stage == stage and i.stack == stack and i.logical_id == allowance["logical_id"]]
            for item in matched:
                item.allowed = allowance["reason"]
            if not matched:
                unused.append(f"{stage.lower()}: {allowance['stack']}/{allowance['logical_id']} {unmatched}")
    return unused


def apply_allowances(changes: list[Change], allowances: dict[str, list[dict]], stages: Iterable[str]) -> list[str]:
    return _allow([c for c in changes if c.destructive], allowances, stages,
                  "matches no destructive change: remove the allowance")


def _stack_outputs(value) -> set[tuple[str, str]]:
    """(stack, output) pairs a value reads from other stacks (Fn::GetStackOutput, as CDK writes cross-stack references)."""
    found: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        read = value.get("Fn::GetStackOutput")
        if isinstance(read, dict) and isinstance(read.get("StackName"), str) and isinstance(read.get("OutputName"), str):
            found.add((read["StackName"], read["OutputName"]))
        for item in value.values():
            found |= _stack_outputs(item)
    elif isinstance(value, list):
        for item in value:
            found |= _stack_outputs(item)
    return found


def _follow_across_stacks(changes: list[Change], stacks: Sequence[StackTemplate]) -> list[Change]:
    """A stack's output that carries a replaced (or removed) resource carries a new value: every resource of another
    stack that reads it gets that new value. Read through a create-only property, it may be replaced (a stateful one
    then blocks like a direct replacement); through another property, it changes in place. Repeated until nothing
    more is reached, within and across stacks."""
    index = {(c.stack, c.logical_id): c for c in changes}
    while True:
        gone = {key for key, c in index.items() if c.replacement in ("yes", "maybe") or c.action == "remove"}
        moved = {(s.name, name) for s in stacks for name, output in s.template.get("Outputs", {}).items()
                 if {(s.name, lid) for lid in _references(output.get("Value"))} & gone}
        grew = False
        for stack in stacks:
            for lid, resource in stack.template.get("Resources", {}).items():
                kind = resource.get("Type")
                current = index.get((stack.name, lid))
                if kind in IGNORED_TYPES or (current is not None and (current.action == "add" or current.replacement in ("yes", "maybe"))):
                    continue
                props = resource.get("Properties", {})
                reads = {name: sorted(_stack_outputs(value) & moved) for name, value in props.items()}
                reads = {name: pairs for name, pairs in reads.items() if pairs}
                same_stack = [name for name in create_only(kind)
                              if {(stack.name, ref) for ref in _references(props.get(name))} & gone]
                labels = {f"{name} (reads {'/'.join(pairs[0])}, a replaced resource's)" for name, pairs in reads.items()}
                labels |= {f"{name} (refers to a replaced resource)" for name in same_stack}
                if current is not None and labels <= set(current.properties):
                    continue
                if not labels:
                    continue
                if current is None:
                    current = index[(stack.name, lid)] = Change(stack.stage, stack.name, lid, kind, "modify",
                                                                stateful=kind in STATEFUL_TYPES)
                current.properties = sorted(set(current.properties) | labels)
                if same_stack or set(reads) & create_only(kind):
                    current.replacement = "maybe"
                grew = True
        if not grew:
            known = {id(c) for c in changes}
            return list(changes) + [c for c in index.values() if id(c) not in known]


def review(base: Sequence[StackTemplate], new: Sequence[StackTemplate], allowances: dict[str, list[dict]]) -> Review:
    old_by_key = {s.key: s for s in base}
    changes, rows = [], []
    for stack in new:
        old = old_by_key.get(stack.key)
        found, found_rows = diff_stack(stack.stage, stack.name, old.template if old else {}, stack.template)
        changes += found
        rows += found_rows
    new_keys = {s.key for s in new}
    for stack in base:
        if stack.key not in new_keys and stack.stage in {s.stage for s in new}:
            found, found_rows = diff_stack(stack.stage, stack.name, stack.template, {})
            changes += found
            rows += found_rows
    for stage in sorted({s.stage for s in new}):  # outputs are read by the stacks of the same stage
        ordered = [c for c in changes if c.stage == stage]
        changes = [c for c in changes if c.stage != stage] + _follow_across_stacks(ordered, [s for s in new if s.stage == stage])
    unused = apply_allowances(changes, allowances, sorted({s.stage for s in new} - {PIPELINE_STAGE}))
    return Review(changes, rows, unused)


# --- reports --------------------------------------------------------------------------------------------------------


def _describe(change: Change) -> str:
    replacement = {"yes": "**replaced**", "maybe": "**may be replaced**", "no": "in place"}[change.replacement]
    what = {"add": "added", "remove": "**removed**", "modify": f"{', '.join(change.properties)}: {replacement}"}[change.action]
    return what


def render_markdown(result: Review, title: str) -> str:
    counts = result.counts()
    lines = [f"# {title}", "", "| added | changed | removed | replaced | blocking |", "| ---: | ---: | ---: | ---: | ---: |",
             f"| {counts['added']} | {counts['changed']} | {counts['removed']} | {counts['replaced']} | {counts['blocking']} |",
             "", f"**{'BLOCKED' if counts['blocking'] else 'OK'}**: {result.summary('this release')}", ""]
    destructive = [c for c in result.changes if c.destructive]
    if destructive:
        lines += ["## Data at risk", "", "| stack | resource | type | change | status |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c.stack} | `{c.logical_id}` | {c.type} | {markdown_cell(_describe(c))} | "
                  f"{'allowed: ' + markdown_cell(c.allowed) if c.allowed else '**blocking**'} |" for c in destructive]
        lines.append("")
    if result.drifts is not None:
        lines += _drift_markdown(result)
    if result.unused_allowances:
        lines += ["## Allowances that match nothing", ""] + [f"- {u}" for u in result.unused_allowances] + [""]
    for kind, heading in (("iam", "IAM statements"), ("network", "Security-group rules")):
        rows = [r for r in result.rows if r.kind == kind]
        if rows:
            lines += [f"## {heading}", "", "| | stack | resource | statement |", "| --- | --- | --- | --- |"]
            lines += [f"| {r.sign} | {r.stack} | `{r.logical_id}` | `{markdown_cell(r.text)}` |" for r in rows]
            lines.append("")
    others = [c for c in result.changes if not c.destructive]
    if others:
        lines += ["## Every other change", "", "| stack | resource | type | change |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.stack} | `{c.logical_id}` | {c.type} | {markdown_cell(_describe(c))} |" for c in others]
        lines.append("")
    return "\n".join(lines) + "\n"


def _drift_status(drift: Drift) -> str:
    if drift.allowed:
        return "allowed: " + markdown_cell(drift.allowed)
    if drift.blocking:
        return "**blocking**: " + ("stateful" if drift.stateful else "this release changes it")
    return "reported"


def _drift_markdown(result: Review) -> list[str]:
    drifts = result.drifts or []
    lines = ["## Drift (what runs differs from the deployed template)", ""]
    if not drifts:
        lines.append("No deployed resource has drifted.")
    else:
        lines += ["| stack | resource | type | drift | properties | status |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {d.stack} | `{d.logical_id}` | {d.type} | {d.status} | {markdown_cell(', '.join(d.properties) or '-')} "
                  f"| {_drift_status(d)} |" for d in drifts]
        lines += ["", "Values are in the CloudFormation console (the stack's drift view). Deploying over drift on a "
                  "stateful resource or on one this release changes needs `allowed_drift` with a reason."]
    lines += [f"- Detection incomplete: {note}" for note in result.drift_notes]
    return [*lines, ""]


def write_junit(path: Path, result: Review) -> None:
    cases = result.changes
    root = ElementTree.Element("testsuites", name="release-review", tests=str(len(cases)),
                               failures=str(sum(c.blocking for c in cases)))
    by_stack: dict[str, list[Change]] = {}
    for change in cases:
        by_stack.setdefault(change.stack, []).append(change)
    for stack, group in by_stack.items():
        suite = ElementTree.SubElement(root, "testsuite", name=stack, tests=str(len(group)),
                                       failures=str(sum(c.blocking for c in group)), errors="0")
        for change in group:
            case = ElementTree.SubElement(suite, "testcase", classname=stack, name=f"{change.logical_id} ({change.type})")
            if change.blocking:
                ElementTree.SubElement(case, "failure", message="destroys data: allow it in the config with a reason",
                                       type=change.action).text = _describe(change)
            else:
                ElementTree.SubElement(case, "system-out").text = _describe(change) + (
                    f" (allowed: {change.allowed})" if change.allowed else "")
    if result.drifts is not None:
        suite = ElementTree.SubElement(root, "testsuite", name="drift", tests=str(len(result.drifts)),
                                       failures=str(sum(d.blocking for d in result.drifts)), errors="0")
        for drift in result.drifts:
            case = ElementTree.SubElement(suite, "testcase", classname=f"{drift.stack} drift",
                                          name=f"{drift.logical_id} ({drift.type})")
            text = f"{drift.status}: {', '.join(drift.properties) or '-'}"
            if drift.blocking:
                ElementTree.SubElement(case, "failure", message="drifted: look at the difference, then allow it in the "
                                       "config with a reason (allowed_drift) or put the resource back", type="drift").text = text
            else:
                ElementTree.SubElement(case, "system-out").text = text + (f" (allowed: {drift.allowed})" if drift.allowed else "")
        root.set("tests", str(len(cases) + len(result.drifts)))
        root.set("failures", str(sum(c.blocking for c in cases) + sum(d.blocking for d in result.drifts)))
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _select(stacks: list[StackTemplate], stage: str | None) -> tuple[list[StackTemplate], str | None]:
    if stage is None:
        return stacks, None
    names = {s.stage.lower(): s.stage for s in stacks}
    if stage.lower() not in names:
        raise ReviewError(f"stage {stage!r} is not in the assembly (stages: {', '.join(sorted(set(names.values())))})")
    chosen = names[stage.lower()]
    return [s for s in stacks if s.stage == chosen], chosen


def main(argv: Sequence[str] | None = None, session_factory=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.changes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a cloud assembly directory, or `deployed`")
    parser.add_argument("--assembly", required=True, type=Path, help="the new cloud assembly (cdk.out)")
    parser.add_argument("--stage", help="one environment (case-insensitive), or Pipeline; default: all")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the environments file (allowed_changes)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--junit", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--notify", metavar="TOPIC_ARN", help="publish the summary to this SNS topic")
    parser.add_argument("--drift", action="store_true",
                        help="also detect the deployed stacks' drift (with --base deployed; allowed_drift in the config)")
    args = parser.parse_args(argv)
    try:
        if args.drift and args.base != "deployed":
            raise ReviewError("--drift compares what runs with what is deployed: it needs --base deployed")
        new, stage = _select(read_assembly(args.assembly), args.stage)
        if args.base == "deployed":
            clients = LookupClients(session_factory)
            base = deployed(new, clients=clients)
        else:
            base = [s for s in read_assembly(Path(args.base)) if s.stage in {n.stage for n in new}]
        result = review(base, new, read_allowances(args.config))
        if args.drift:
            targets = []
            for stack in base:
                if stack.template:  # a stack not deployed yet has no drift
                    with _aws_errors(stack, clients.role(stack)):
                        targets.append((stack, clients.cloudformation(stack)))
            result.drifts, result.drift_notes = detect_drift(targets)
            result.unused_allowances += judge_drift(
                result.drifts, result.changes, read_drift_allowances(args.config), {s.stage for s in new})
    except AssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scope = f"Release review of {stage or 'every environment'}"
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(result, scope))
    if args.junit:
        write_junit(args.junit, result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": result.counts(), "changes": [asdict(c) | {"blocking": c.blocking}
                                         for c in result.changes], "rows": [asdict(r) for r in result.rows],
                                         "unused_allowances": result.unused_allowances,
                                         "drifts": None if result.drifts is None else [
                                             asdict(d) | {"blocking": d.blocking} for d in result.drifts],
                                         "drift_notes": result.drift_notes}, indent=2))
    print(result.summary(scope))
    for change in result.changes:
        if change.destructive:
            state = f"allowed: {change.allowed}" if change.allowed else "BLOCKING"
            print(f"  {state}: {change.stack}/{change.logical_id} ({change.type}) {_describe(change)}")
    for drift in result.drifts or ():
        state = f"allowed: {drift.allowed}" if drift.allowed else ("BLOCKING" if drift.blocking else "reported")
        print(f"  drift, {state}: {drift.stack}/{drift.logical_id} ({drift.type}) {drift.status} "
              f"{', '.join(drift.properties)}".rstrip())
    for note in result.drift_notes:
        print(f"  drift detection incomplete: {note}")
    for unused in result.unused_allowances:
        print(f"  unused allowance: {unused}")
    if args.notify:
        try:
            import boto3

            boto3.client("sns", region_name=args.notify.split(":")[3]).publish(
                TopicArn=args.notify, Subject=scope[:100], Message=result.summary(scope))
        except Exception as error:  # the review stands; say the notification failed
            print(f"error: could not publish the summary to {args.notify}: {error}", file=sys.stderr)
            return 2
    return 1 if result.counts()["blocking"] else 0


if __name__ == "__main__":
    sys.exit(main())
