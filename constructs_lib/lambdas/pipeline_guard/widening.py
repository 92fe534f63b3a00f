"""What a new pipeline template lets the pipeline do that the deployed one did not: the rows the pipeline guard shows,
and their fingerprint (stdlib only: the guard Lambda and the tests use this very module)."""

from __future__ import annotations

import hashlib
import json

# Where templates hold who may do what: identity and resource policies, key policies, role trust.
POLICY_PROPERTIES = ("PolicyDocument", "KeyPolicy", "AssumeRolePolicyDocument")
# Which role a resource acts with: a change makes it act with other rights.
ROLE_PROPERTIES = ("Role", "ServiceRole", "RoleArn", "ExecutionRoleArn")
# Who a policy applies to: adding one gives that principal the policy's rights.
ATTACHMENTS = ("Roles", "Users", "Groups")
# Resources that give a principal a way in, whatever they say.
DOORS = ("AWS::IAM::User", "AWS::IAM::AccessKey", "AWS::IAM::Group", "AWS::Lambda::Permission",
         "AWS::CloudFormation::Stack", "AWS::SSM::Parameter")


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _statements(resource: dict) -> set[str]:
    """Each statement of each policy a resource carries, as `Property: {statement}`; managed policies as their ARN."""
    props = resource.get("Properties", {})
    found = set()
    documents = [(name, props[name]) for name in POLICY_PROPERTIES if isinstance(props.get(name), dict)]
    documents += [(f"Policies.{p.get('PolicyName')}", p.get("PolicyDocument")) for p in props.get("Policies", [])
                  if isinstance(p, dict) and isinstance(p.get("PolicyDocument"), dict)]
    for name, document in documents:
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            found.add(f"{name}: {_canonical(statement)}")
    managed = props.get("ManagedPolicyArns", [])
    for arn in managed if isinstance(managed, list) else [managed]:
        found.add(f"ManagedPolicyArns: {_canonical(arn)}")
    return found


def _stages(template: dict):
    """Every stage of every CodePipeline in the template."""
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::CodePipeline::Pipeline":
            yield from resource.get("Properties", {}).get("Stages", [])


def _actions(template: dict) -> dict[tuple[str, str], dict]:
    """{(stage, action name): action} of every CodePipeline in the template."""
    return {(stage.get("Name", ""), action.get("Name", "")): action
            for stage in _stages(template) for action in stage.get("Actions", [])}


def _gates(template: dict) -> dict[tuple[str, str], str]:
    """{(stage, BeforeEntry | OnSuccess | OnFailure): the condition} of every CodePipeline in the template."""
    return {(stage.get("Name", ""), kind): _canonical(stage[kind])
            for stage in _stages(template) for kind in ("BeforeEntry", "OnSuccess", "OnFailure") if kind in stage}


def _pipelines(template: dict) -> dict[str, dict]:
    return {lid: r.get("Properties", {}) for lid, r in template.get("Resources", {}).items()
            if r.get("Type") == "AWS::CodePipeline::Pipeline"}


def _pipeline_rows(old: dict, new: dict) -> list[str]:
    """The pipelines' own shape: the stages' order, each action's kind, order, role and region, the pipeline's settings."""
    rows = []
    for logical_id, props in sorted(_pipelines(new).items()):
        before = _pipelines(old).get(logical_id)
        if before is None:
            continue
        for name in sorted((set(props) | set(before)) - {"Stages"}):
            if _canonical(props.get(name)) != _canonical(before.get(name)):
                rows.append(f"pipeline {logical_id} changes {name}")
        old_order = [s.get("Name") for s in before.get("Stages", [])]
        new_order = [s.get("Name") for s in props.get("Stages", []) if s.get("Name") in old_order]
        if new_order != [name for name in old_order if name in new_order]:
            rows.append(f"pipeline {logical_id} reorders its stages: {' > '.join(new_order)}")
    old_actions, new_actions = _actions(old), _actions(new)
    for key, action in sorted(new_actions.items()):
        previous = old_actions.get(key)
        if previous is None:
            continue
        for name in ("ActionTypeId", "RunOrder", "RoleArn", "Region"):
            if _canonical(action.get(name)) != _canonical(previous.get(name)):
                rows.append(f"action {key[0]}/{key[1]} changes {name}")
    return rows


def widening(old: dict, new: dict, guard_logical_ids: tuple[str, ...] = ()) -> list[str]:
    """Rows, one per way the new template widens the pipeline's rights or weakens its checks: a policy statement,
    trust statement or managed policy added (a broadened one shows as added); a policy applied to another principal;
    a resource acting with another role; a new role, resource type, user, access key, Lambda permission, nested stack
    or parameter; the self-mutation step running something else; a new action, or an action whose kind, order, role
    or region changes; the stages reordered or the pipeline's settings changed; an approval removed; a stage's gate
    changed or removed; the guard itself (its function, role or action) changed or removed."""
    rows = []
    old_resources, new_resources = old.get("Resources", {}), new.get("Resources", {})
    old_types = {r.get("Type") for r in old_resources.values()}
    for logical_id, resource in sorted(new_resources.items()):
        before = old_resources.get(logical_id)
        kind = resource.get("Type")
        props, old_props = resource.get("Properties", {}), (before or {}).get("Properties", {})
        if kind not in old_types:
            rows.append(f"new resource type {kind}: {logical_id}")
        elif before is None and (kind == "AWS::IAM::Role" or kind in DOORS):
            rows.append(f"new {'role' if kind == 'AWS::IAM::Role' else kind} {logical_id}")
        added = _statements(resource) - (_statements(before) if before else set())
        rows += [f"+ {logical_id} {statement}" for statement in sorted(added)]
        if before is not None:
            rows += [f"{logical_id} acts with another role: {name}" for name in ROLE_PROPERTIES
                     if _canonical(props.get(name)) != _canonical(old_props.get(name))]
            if "SelfMutation" in logical_id and kind == "AWS::CodeBuild::Project":
                rows += [f"the self-mutation step changes what it runs: {logical_id} {name}" for name in ("Source", "Environment")
                         if _canonical(props.get(name)) != _canonical(old_props.get(name))]
        if kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for name in ATTACHMENTS:
                attached = {_canonical(v) for v in props.get(name, [])} - {_canonical(v) for v in old_props.get(name, [])}
                rows += [f"{logical_id} now applies to {value} ({name})" for value in sorted(attached)]
    rows += _pipeline_rows(old, new)
    old_actions, new_actions = _actions(old), _actions(new)
    for (stage, name), action in sorted(new_actions.items()):
        if (stage, name) not in old_actions:
            rows.append(f"new action {stage}/{name} ({action.get('ActionTypeId', {}).get('Category')})")
    for (stage, name), action in sorted(old_actions.items()):
        if (stage, name) not in new_actions and action.get("ActionTypeId", {}).get("Category") == "Approval":
            rows.append(f"approval removed: {stage}/{name}")
    old_gates, new_gates = _gates(old), _gates(new)
    for (stage, kind), gate in sorted(old_gates.items()):  # a gate added is no widening; one changed or removed is
        if new_gates.get((stage, kind)) != gate:
            rows.append(f"gate changed or removed: stage {stage} {kind} ({gate})")
    for logical_id in guard_logical_ids:
        if _canonical(old_resources.get(logical_id)) != _canonical(new_resources.get(logical_id)):
            rows.append(f"the pipeline guard changes: {logical_id}")
    guard_actions = [key for key, action in old_actions.items()
                     if action.get("Name") == "PipelineGuard"]
    for key in guard_actions:
        if _canonical(old_actions[key]) != _canonical(new_actions.get(key)):
            rows.append(f"the pipeline guard changes: action {key[0]}/{key[1]}")
    return rows


def fingerprint(rows: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]


def _resources(template: dict) -> dict:
    """A template's resources as they act: without CDK's metadata resource and the resources' Metadata."""
    return {lid: {k: v for k, v in r.items() if k != "Metadata"} for lid, r in template.get("Resources", {}).items()
            if r.get("Type") != "AWS::CDK::Metadata"}


def support_rows(support: dict[str, tuple[dict | None, dict]]) -> list[str]:
    """Rows of the stacks deployed along with the pipeline stack ({name: (deployed template or None, new template)}:
    CDK's cross-region support stacks, a bucket, a key and its alias that no release changes): any change to one is a
    row (an alias pointed at another key widens what the pipeline's alias-scoped grant reaches), with what it widens;
    one not deployed yet is new, and everything in it shows."""
    rows = []
    for name, (old, new) in sorted(support.items()):
        if old is None:
            rows.append(f"new stack {name} deployed with the pipeline")
        before, after = _resources(old or {}), _resources(new)
        rows += [f"{name}: {lid} {'added' if lid not in before else 'removed' if lid not in after else 'changes'}"
                 for lid in sorted(before.keys() | after.keys())
                 if _canonical(before.get(lid)) != _canonical(after.get(lid))]
        rows += [f"{name}: {row}" for row in widening(old or {}, new)]
    return rows


def decide(old: dict | None, new: dict, guard_logical_ids: tuple[str, ...] = (), allowed=lambda _mark: None,
           support: dict[str, tuple[dict | None, dict]] | None = None) -> tuple[bool, str]:
    """(passes, what to say). No deployed template (the first deploy, by a person): passes. `allowed(fingerprint)`:
    the reason a person gave for exactly this widening, or None. `support`: the stacks deployed along with it
    (support_rows)."""
    if not old:
        return True, "no deployed pipeline stack to compare with: the first deploy is a person's"
    rows = widening(old, new, guard_logical_ids) + support_rows(support or {})
    if not rows:
        return True, "the release does not widen what the pipeline may do"
    mark = fingerprint(rows)
    shown = "\n".join(f"  {row}" for row in rows)
    reason = allowed(mark)
    if reason:
        return True, f"the release widens what the pipeline may do, allowed by a person ({mark}: {reason}):\n{shown}"
    return False, (f"the release widens what the pipeline may do ({len(rows)} change(s), fingerprint {mark}); "
                   "UpdatePipeline would deploy it before any approval. A person who has reviewed it allows exactly "
                   f"this widening (README: \"The pipeline guard\"), then retries the Build stage:\n{shown}")
