"""What a new pipeline template lets the pipeline do that the deployed one did not: the rows the pipeline guard shows,
and their fingerprint (stdlib only: the guard Lambda and the tests use this very module)."""

from __future__ import annotations

import hashlib
import json

# Where templates hold who may do what: identity and resource policies, key policies, role trust.
POLICY_PROPERTIES = ("PolicyDocument", "KeyPolicy", "AssumeRolePolicyDocument")
METADATA_KEY = "PipelineGuard"  # template Metadata: {"AllowedWidening": [{"fingerprint", "reason"}]}


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


def _actions(template: dict) -> dict[tuple[str, str], dict]:
    """{(stage, action name): action} of every CodePipeline in the template."""
    found = {}
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::CodePipeline::Pipeline":
            for stage in resource.get("Properties", {}).get("Stages", []):
                for action in stage.get("Actions", []):
                    found[(stage.get("Name", ""), action.get("Name", ""))] = action
    return found


def _gates(template: dict) -> dict[tuple[str, str], str]:
    """{(stage, BeforeEntry | OnSuccess | OnFailure): the condition} of every CodePipeline in the template."""
    found = {}
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::CodePipeline::Pipeline":
            for stage in resource.get("Properties", {}).get("Stages", []):
                for kind in ("BeforeEntry", "OnSuccess", "OnFailure"):
                    if kind in stage:
                        found[(stage.get("Name", ""), kind)] = _canonical(stage[kind])
    return found


def widening(old: dict, new: dict, guard_logical_ids: tuple[str, ...] = ()) -> list[str]:
    """Rows, one per way the new template widens the pipeline's rights or weakens its checks:
    a policy statement, trust statement or managed policy added (a broadened one shows as added); a new role; a new
    action (a step that runs with a role of its own); an approval action removed; a stage's gate removed or changed;
    the guard itself (its function, role or action) changed or removed."""
    rows = []
    old_resources, new_resources = old.get("Resources", {}), new.get("Resources", {})
    for logical_id, resource in sorted(new_resources.items()):
        before = old_resources.get(logical_id)
        if resource.get("Type") == "AWS::IAM::Role" and before is None:
            rows.append(f"new role {logical_id}")
        added = _statements(resource) - (_statements(before) if before else set())
        rows += [f"+ {logical_id} {statement}" for statement in sorted(added)]
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


def allowances(template: dict) -> dict[str, str]:
    """{fingerprint: reason} the new template carries (config [pipeline] allowed_widening)."""
    entries = template.get("Metadata", {}).get(METADATA_KEY, {}).get("AllowedWidening", [])
    return {entry["fingerprint"]: entry["reason"] for entry in entries if isinstance(entry, dict)}


def decide(old: dict | None, new: dict, guard_logical_ids: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(passes, what to say). No deployed template (the first deploy, by a person): passes."""
    if not old:
        return True, "no deployed pipeline stack to compare with: the first deploy is a person's"
    rows = widening(old, new, guard_logical_ids)
    if not rows:
        return True, "the release does not widen what the pipeline may do"
    mark = fingerprint(rows)
    shown = "\n".join(f"  {row}" for row in rows)
    reason = allowances(new).get(mark)
    if reason:
        return True, f"the release widens what the pipeline may do, allowed ({mark}: {reason}):\n{shown}"
    return False, (f"the release widens what the pipeline may do ({len(rows)} change(s), fingerprint {mark}); "
                   "UpdatePipeline would deploy it before any approval. Review it; to let it through, add to the config "
                   f"[[pipeline.allowed_widening]] fingerprint = \"{mark}\" and a reason, in a reviewed commit:\n{shown}")
