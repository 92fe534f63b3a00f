"""Group resources in a construct without renaming them in CloudFormation.

CloudFormation identifies a resource by its logical id, which CDK derives from the construct path below the stack
(`Data/Postgres/Resource` -> `Postgres9DC8BB04`). Moving a resource into a new construct changes that path, so the
id, and CloudFormation would replace the resource: a new, empty database. A `Group` is a construct whose own id is left
out of its resources' logical ids, as CDK already does for a child called `Default`: at synth, before any reference is
resolved, it gives each element below it the id CDK would give it without the group. The committed logical-id lock
(`tests/data/stateful_logical_ids.json`) and the template comparison in the tests prove a refactor kept them.

The aspect that does it sits on an empty leaf of the group, not on the group: CDK calls an aspect once for every
construct below the one it is added to, and each call from CDK (Node.js) into Python is a round trip; on the leaf it is
called once, and walks the group's elements in one request. An element that another aspect adds to the group after
that walk (CDK visits in tree order) would keep the group's id in its logical id: a validation of the group fails
synth then, naming it, rather than let CloudFormation replace the resource.
"""

from __future__ import annotations

import hashlib
import re

import jsii
from aws_cdk import AspectPriority, Aspects, CfnElement, IAspect, Stack
from constructs import Construct, IConstruct, IValidation

_HIDDEN_ID = "Default"  # CDK leaves this id out of logical ids
_HIDDEN_FROM_HUMAN_ID = "Resource"  # ... and this one out of their readable part
_HASH_LENGTH = 8
_MAX_HUMAN_LENGTH = 240
_MAX_ID_LENGTH = 255


class Group(Construct):
    """A construct whose id does not appear in its resources' logical ids. Groups do not nest."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        stack_path, path = stack.node.path, self.node.path
        below = path.removeprefix(f"{stack_path}/").split("/") if stack_path else path.split("/")
        if any(isinstance(scope, Group) for scope in self.node.scopes[:-1]):
            raise TypeError(f"{path}: a Group inside a Group")
        keeper = _KeepLogicalIds(self, stack_path, len(below) - 1)
        Aspects.of(Construct(self, _KEEPER_ID)).add(keeper, priority=AspectPriority.MUTATING)
        self.node.add_validation(keeper)


_KEEPER_ID = "KeepLogicalIds"  # an empty construct: no element, so no logical id of its own


@jsii.implements(IAspect, IValidation)
class _KeepLogicalIds:
    """Give every CloudFormation element below a group the logical id it would have without the group's id; at
    validation, refuse elements that arrived after."""

    def __init__(self, group: Construct, stack_path: str, group_depth: int) -> None:
        self._group = group
        self._prefix = f"{stack_path}/" if stack_path else ""
        self._depth = group_depth  # the group's index in paths below the stack
        self._kept: set[str] = set()  # paths

    def _elements(self) -> list[CfnElement]:
        return [element for element in self._group.node.find_all() if isinstance(element, CfnElement)]

    def visit(self, node: IConstruct) -> None:
        # Called once, for the leaf, before references resolve (aspects run before CDK prepares the app).
        for element in self._elements():
            path = element.node.path
            components = path.removeprefix(self._prefix).split("/")
            element.override_logical_id(unique_id(components[: self._depth] + components[self._depth + 1 :]))
            self._kept.add(path)

    def validate(self) -> list[str]:
        elements = self._elements()
        if len(elements) == len(self._kept):  # a count in the usual case: no path read back from CDK
            return []
        late = ", ".join(sorted({element.node.path for element in elements} - self._kept))
        return [f"{late}: added to the group after its logical ids were kept (by an aspect?), so its logical id would "
                "carry the group's id; add it when the group is built"]


def unique_id(components: list[str]) -> str:
    """CDK's makeUniqueId: the readable path (duplicates and `Resource` dropped) plus a hash of the whole path."""
    components = [c for c in components if c != _HIDDEN_ID]
    if not components:
        raise ValueError("a logical id needs at least one path component")
    if len(components) == 1:
        candidate = _alphanumeric(components[0])
        if len(candidate) <= _MAX_ID_LENGTH:
            return candidate
    digest = hashlib.md5("/".join(components).encode(), usedforsecurity=False).hexdigest()[:_HASH_LENGTH].upper()
    human: list[str] = []
    for component in components:
        if not human or not human[-1].endswith(component):
            human.append(component)
    readable = "".join(_alphanumeric(c) for c in human if c != _HIDDEN_FROM_HUMAN_ID)
    return readable[:_MAX_HUMAN_LENGTH] + digest


def _alphanumeric(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)
