"""Evaluate the IAM policies of a synthesized template against requests, as IAM does for one principal in its own
account: an explicit Deny wins, then any Allow, otherwise the request is denied.

The tests ask "may Coder's role do X to Y" with the ARNs of real platform resources, instead of reading statements
one by one: a wildcard, a condition or a missing Deny that lets a request through fails them. CloudFormation
intrinsics resolve to the names CloudFormation would give (a cluster's ARN from its ClusterName) or to a stable
stand-in (`<LogicalId.Arn>`, `<Stack.Output>`), which the tests use to build the same ARNs. Condition operators not
listed here raise: a test must never pass because the evaluator skipped something.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.assembly import Template

Context = Mapping[str, str | list[str]]


def _pattern(glob: str, case_sensitive: bool = True) -> re.Pattern[str]:
    """IAM wildcards: `*` any run of characters, `?` one; nothing else is special."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", 0 if case_sensitive else re.IGNORECASE)


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


_ARN_FROM_REF = {
    "AWS::EFS::AccessPoint": lambda ref: ("elasticfilesystem", f"access-point/{ref}"),
    "AWS::EFS::FileSystem": lambda ref: ("elasticfilesystem", f"file-system/{ref}"),
}


class Resolver:
    """Turns the intrinsics of one template into strings (see the module docstring)."""

    def __init__(self, template: Template, account: str, region: str, partition: str = "aws",
                 stacks: Mapping[str, Template] | None = None) -> None:
        """`stacks`: the templates by stack name, to follow `Fn::GetStackOutput` to the resource it names."""
        self.template, self.account, self.region, self.partition = template, account, region, partition
        self.stacks = stacks or {}

    def of(self, template: Template) -> Resolver:
        return Resolver(template, self.account, self.region, self.partition, self.stacks)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self(v) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref":
            return self._ref(argument)
        if function == "Fn::GetAtt":
            return self._get_att(*argument)
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(str(self(part)) for part in parts)
        if function == "Fn::GetStackOutput":
            producer = self.stacks.get(argument["StackName"])
            if producer is None:
                return f"<{argument['StackName']}.{argument['OutputName']}>"
            return self.of(producer)(producer.body["Outputs"][argument["OutputName"]]["Value"])
        if function == "Fn::Split":
            separator, source = argument
            return str(self(source)).split(separator)
        if function == "Fn::Select":
            index, items = argument
            return self(items)[int(index)]
        if function == "Fn::Sub":
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self._ref(m.group(1))), argument)
        if function.startswith("Fn::"):
            raise NotImplementedError(f"intrinsic {function} in a policy")
        return {k: self(v) for k, v in value.items()}

    def _ref(self, name: str) -> str:
        pseudo = {"AWS::Partition": self.partition, "AWS::Region": self.region, "AWS::AccountId": self.account,
                  "AWS::URLSuffix": "amazonaws.com"}
        if name in pseudo:
            return pseudo[name]
        resource = self.template.resources[name]
        if resource["Type"] == "AWS::ECS::Cluster":
            return resource["Properties"]["ClusterName"]
        return f"<{name}>"

    def _get_att(self, logical_id: str, attribute: str) -> str:
        resource = self.template.resources[logical_id]
        if resource["Type"] == "AWS::ECS::Cluster" and attribute == "Arn":
            return self.cluster_arn(resource["Properties"]["ClusterName"])
        if resource["Type"] == "AWS::IAM::Role" and attribute == "Arn":
            return self.role_arn(logical_id)
        if resource["Type"] in _ARN_FROM_REF and attribute == "Arn":  # the ARN CDK builds from the Ref elsewhere
            return self.arn(*_ARN_FROM_REF[resource["Type"]](self._ref(logical_id)))
        return f"<{logical_id}.{attribute}>"

    def cluster_arn(self, name: str) -> str:
        return f"arn:{self.partition}:ecs:{self.region}:{self.account}:cluster/{name}"

    def role_arn(self, logical_id: str) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/<{logical_id}>"

    def arn(self, service: str, resource: str) -> str:
        """An ARN of this template's account and region, e.g. arn("ecs", "service/cluster/name")."""
        account_region = f"{self.region}:{self.account}" if service != "iam" else f":{self.account}"
        return f"arn:{self.partition}:{service}:{account_region}:{resource}"


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Context = None  # type: ignore[assignment]

    def value(self, key: str) -> list[str] | None:
        context = {k.lower(): v for k, v in (self.context or {}).items()}
        found = context.get(key.lower())
        return None if found is None else [str(v) for v in _listed(found)]


def _matches_any(patterns: Iterable[str], value: str, case_sensitive: bool = True) -> bool:
    return any(_pattern(str(p), case_sensitive).match(value) for p in patterns)


_OPERATORS = frozenset({"StringEquals", "StringNotEquals", "StringLike", "StringNotLike", "ArnEquals", "ArnNotEquals",
                        "ArnLike", "ArnNotLike", "Bool"})


def _condition_holds(operator: str, key: str, expected: Any, request: Request) -> bool:
    values = request.value(key)
    expected = [str(e).lower() if isinstance(e, bool) else str(e) for e in _listed(expected)]
    if operator == "Null":
        return (values is None) == (expected[0].lower() == "true")
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise NotImplementedError(f"condition operator {operator}")
    if values is None:
        # A missing key matches no positive operator and every negated one (IfExists: every operator).
        return if_exists or "Not" in base
    if base in ("StringEquals", "ArnEquals"):
        return any(v in expected for v in values)
    if base in ("StringNotEquals", "ArnNotEquals"):
        return all(v not in expected for v in values)
    if base in ("StringLike", "ArnLike"):
        return any(_matches_any(expected, v) for v in values)
    if base in ("StringNotLike", "ArnNotLike"):
        return not any(_matches_any(expected, v) for v in values)
    if base == "Bool":
        return any(v.lower() in [e.lower() for e in expected] for v in values)
    raise NotImplementedError(f"condition operator {operator}")


def _statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not _matches_any(_listed(statement["Action"]), request.action, case_sensitive=False):
            return False
    elif _matches_any(_listed(statement["NotAction"]), request.action, case_sensitive=False):
        return False
    if "Resource" in statement:
        if not _matches_any(_listed(statement["Resource"]), request.resource):
            return False
    elif "NotResource" in statement:
        if _matches_any(_listed(statement["NotResource"]), request.resource):
            return False
    # Neither: a resource policy's statement about its own resource (an EFS file system policy may leave it out).
    for operator, keys in statement.get("Condition", {}).items():
        if operator.startswith(("ForAnyValue:", "ForAllValues:")):
            raise NotImplementedError(f"condition operator {operator}")
        for key, expected in keys.items():
            if not _condition_holds(operator, key, expected, request):
                return False
    return True


def resource_policy_statements(document: Mapping[str, Any], principal: str) -> list[dict[str, Any]]:
    """The statements of a resource policy that apply to `principal` (an ARN in the resource's account)."""
    def names(statement: Mapping[str, Any]) -> list[str]:
        if statement.get("Principal") == "*":
            return ["*"]
        return [str(p) for p in _listed(statement.get("Principal", {}).get("AWS", []))]

    if any("NotPrincipal" in s for s in _listed(document["Statement"])):
        raise NotImplementedError("NotPrincipal")
    return [s for s in _listed(document["Statement"]) if any(n == "*" or n == principal for n in names(s))]


def decision(statements: Iterable[Mapping[str, Any]], request: Request) -> str:
    """"deny" (an explicit Deny applies), "allow" (an Allow does, no Deny) or "implicit-deny"."""
    applying = [s for s in statements if _statement_applies(s, request)]
    if any(s["Effect"] == "Deny" for s in applying):
        return "deny"
    return "allow" if any(s["Effect"] == "Allow" for s in applying) else "implicit-deny"


def allowed(statements: Iterable[Mapping[str, Any]], request: Request) -> bool:
    return decision(list(statements), request) == "allow"


def role_statements(template: Template, role_logical_id: str, resolve: Resolver) -> list[dict[str, Any]]:
    """Every statement of every identity policy attached to the role in this template (inline policies, AWS::IAM::Policy
    and managed policies defined here), resolved."""
    role = template.resources[role_logical_id]
    found: list[dict[str, Any]] = []
    for policy in role["Properties"].get("Policies", []):
        found += _listed(resolve(policy["PolicyDocument"])["Statement"])
    for resource in template.resources.values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            roles = resource["Properties"].get("Roles", [])
            if {"Ref": role_logical_id} in roles:
                found += _listed(resolve(resource["Properties"]["PolicyDocument"])["Statement"])
    for managed in role["Properties"].get("ManagedPolicyArns", []):
        if isinstance(managed, dict) and "Ref" in managed and managed["Ref"] in template.resources:
            found += _listed(resolve(template.resources[managed["Ref"]]["Properties"]["PolicyDocument"])["Statement"])
    return found
