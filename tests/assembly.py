"""Read a synthesized cloud assembly (the CDK CLI's output) for tests: templates per Stage and stack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.synth_summary import iter_stacks

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Template:
    stack_name: str
    path: Path
    body: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.body.get("Resources", {})

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: r for lid, r in self.resources.items() if r["Type"] == resource_type}

    def props(self, resource_type: str) -> list[dict[str, Any]]:
        return [r.get("Properties", {}) for r in self.of_type(resource_type).values()]

    def one(self, resource_type: str) -> dict[str, Any]:
        found = self.props(resource_type)
        assert len(found) == 1, f"expected one {resource_type} in {self.stack_name}, found {len(found)}"
        return found[0]

    def logical_id(self, construct_path_suffix: str) -> str:
        """Logical id of the resource whose construct path ends with the given suffix."""
        matches = [
            lid
            for lid, r in self.resources.items()
            if r.get("Metadata", {}).get("aws:cdk:path", "").endswith(construct_path_suffix)
        ]
        assert len(matches) == 1, f"{construct_path_suffix!r} matches {matches} in {self.stack_name}"
        return matches[0]


@dataclass
class Assembly:
    directory: Path
    templates: dict[str, Template]  # keyed by stack name: CoderPipeline, Staging-Network, ...

    @classmethod
    def load(cls, directory: Path) -> Assembly:
        templates = {}
        for stack in iter_stacks(directory):
            templates[stack.stack_name] = Template(stack.stack_name, stack.template, json.loads(stack.template.read_text()))
        return cls(directory, templates)

    def stack(self, stage: str, layer: str) -> Template:
        return self.templates[f"{stage}-{layer}"]
