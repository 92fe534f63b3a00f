"""What makes CloudFormation replace a resource: each resource type's create-only properties, from CloudFormation's
resource schemas (as cfn-lint ships them), committed in `pipeline/create-only.json` for every type the synthesized
stacks use. The release review and `make adopt` read the committed file (standard library only): the pipeline's
Review step installs no cfn-lint and its schemas, and `python -m pipeline.changes` runs after `make synth` alone.

`python -m pipeline.resource_schemas --assembly cdk.out [--check]` (and `make execution-policies`) rewrites it from
the assembly; a test fails when it is stale (a release that adds a resource type).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from pipeline.assembly import AssemblyError

TABLE = Path(__file__).with_name("create-only.json")
SCHEMA_REGION = "us-east-1"  # the schemas' create-only properties are the same in every region the stacks use
# Types CloudFormation creates through a provider of its own: no schema, updated in place.
NO_SCHEMA = ("Custom::", "AWS::CloudFormation::CustomResource", "AWS::CDK::Metadata")


# Properties that replace the resource when they change although the schema does not say so (CloudFormation's template
# reference): AWS::RDS::DBInstance, a changed DBSnapshotIdentifier restores a new instance and deletes the original, a
# removed one creates an empty instance and deletes the original; AWS::DynamoDB::Table, KeySchema "Update requires:
# Replacement".
REPLACING = {"AWS::RDS::DBInstance": frozenset({"DBSnapshotIdentifier"}), "AWS::DynamoDB::Table": frozenset({"KeySchema"})}


class UnknownType(AssemblyError):
    """A resource type the committed table does not list (a release that added one: regenerate the table)."""


def _no_schema(resource_type: str) -> bool:
    return resource_type.startswith(NO_SCHEMA)


def derive(types: Iterable[str]) -> dict[str, list[str]]:
    """{type: its top-level create-only properties} for each type that has a schema."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    table = {}
    for resource_type in sorted(set(types)):
        if _no_schema(resource_type):
            continue
        try:
            schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(SCHEMA_REGION, resource_type).schema
        except Exception as error:
            raise AssemblyError(f"{resource_type}: no CloudFormation resource schema ({type(error).__name__})") from None
        table[resource_type] = sorted({path.split("/")[2] for path in schema.get("createOnlyProperties", [])
                                       if path.startswith("/properties/")})
    return table


def render(table: dict[str, list[str]]) -> str:
    return json.dumps({"source": f"cfn-lint resource schemas ({SCHEMA_REGION}), createOnlyProperties",
                       "types": table}, indent=1, sort_keys=True) + "\n"


@cache
def _committed() -> dict[str, frozenset[str]]:
    try:
        types = json.loads(TABLE.read_text())["types"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise AssemblyError(f"{TABLE}: unreadable ({error}); run python -m pipeline.resource_schemas") from None
    return {name: frozenset(properties) for name, properties in types.items()}


def create_only(resource_type: str) -> frozenset[str]:
    """The properties whose change makes CloudFormation replace a `resource_type`: its committed create-only
    properties and REPLACING (none for a custom resource)."""
    if _no_schema(resource_type):
        return frozenset()
    table = _committed()
    if resource_type not in table:
        raise UnknownType(f"{resource_type} is not in {TABLE.name}: a new resource type; run `make execution-policies` "
                          "(it rewrites the table) and commit it")
    return table[resource_type] | REPLACING.get(resource_type, frozenset())


def assembly_types(assembly: Path) -> set[str]:
    from pipeline.changes import read_assembly

    return {r["Type"] for stack in read_assembly(assembly) for r in stack.template.get("Resources", {}).values()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.resource_schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assembly", type=Path, default=Path("cdk.out"), help="the synthesized cloud assembly")
    parser.add_argument("--check", action="store_true", help="compare with the committed table, write nothing")
    args = parser.parse_args(argv)
    try:
        text = render(derive(assembly_types(args.assembly)))
    except AssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if not TABLE.exists() or TABLE.read_text() != text:
            print(f"{TABLE}: out of date: run python -m pipeline.resource_schemas", file=sys.stderr)
            return 1
        print(f"{TABLE}: current ({len(json.loads(text)['types'])} types)")
        return 0
    TABLE.write_text(text)
    print(f"wrote {TABLE} ({len(json.loads(text)['types'])} types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
