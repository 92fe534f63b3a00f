"""CloudFormation's execution role, least privilege: the IAM policies `make bootstrap` gives it instead of
AdministratorAccess, derived from the synthesized assembly.

    python -m pipeline.execution_policy --assembly cdk.out            # rewrite pipeline/execution-policies/
    python -m pipeline.execution_policy --assembly cdk.out --check    # exit 1 when they are not what the assembly needs

For each resource type of the templates, the actions CloudFormation declares it needs to create, update, delete and
read it (the `handlers` of CloudFormation's resource schemas, as cfn-lint ships them), plus what a template needs
beyond its resources: invoking a custom resource's provider function, and reading the CDK bootstrap's version
parameter (every template's bootstrap-version rule). Two sets: `pipeline` (the pipeline stack, in the pipeline
account) and `platform` (the environments' stacks). Each set is split by service into documents under IAM's 6,144
characters per managed policy, written as `<set>-<n>.json`: committed, so that `make bootstrap` needs no assembly and
no cfn-lint, and held to the assembly by tests/test_execution_policy.py. Resources are `*`: the actions are derived,
not the resources (a template's names are known, the resources CloudFormation reads to check them are not).
Exit status: 0 done (or current); 1 --check found them out of date; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.assembly import PIPELINE_STAGE, AssemblyError
from pipeline.changes import read_assembly

DIRECTORY = Path(__file__).resolve().parent / "execution-policies"
SETS = ("pipeline", "platform")
MAX_POLICY_CHARS = 6144  # IAM's limit for a managed policy document, whitespace not counted
HANDLERS = ("create", "update", "delete", "read")
# Beyond the resources' own handlers.
CUSTOM_RESOURCE_ACTIONS = ("lambda:InvokeFunction",)  # CloudFormation invokes the provider of a Custom:: resource
TEMPLATE_ACTIONS = ("ssm:GetParameters",)  # the bootstrap-version rule reads /cdk-bootstrap/<qualifier>/version
# Types whose schema (a legacy, non-registry type) lists no handler permissions: the API calls CloudFormation makes for
# them, from the service's API reference.
NO_HANDLER_SCHEMA = {
    "AWS::CodeBuild::Project": ("codebuild:CreateProject", "codebuild:UpdateProject", "codebuild:DeleteProject",
                                "codebuild:BatchGetProjects", "iam:PassRole"),
}


class PolicyError(AssemblyError):
    pass


def resource_types(assembly: Path) -> dict[str, set[str]]:
    """{set: resource types of its stacks}."""
    found: dict[str, set[str]] = {name: set() for name in SETS}
    for stack in read_assembly(assembly):
        kind = "pipeline" if stack.stage == PIPELINE_STAGE else "platform"
        found[kind] |= {r["Type"] for r in stack.template.get("Resources", {}).values()}
    return found


def type_actions(resource_type: str, region: str = "us-east-1") -> set[str]:
    """What CloudFormation needs for one resource type (its schema's handlers); a custom resource's provider call."""
    if resource_type.startswith("Custom::") or resource_type == "AWS::CloudFormation::CustomResource":
        return set(CUSTOM_RESOURCE_ACTIONS)
    if resource_type == "AWS::CDK::Metadata":
        return set()
    if resource_type in NO_HANDLER_SCHEMA:
        return set(NO_HANDLER_SCHEMA[resource_type])
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    try:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, resource_type).schema
    except Exception as error:  # an unknown type: the policy cannot be derived, say which
        raise PolicyError(f"{resource_type}: no CloudFormation resource schema ({type(error).__name__})") from None
    handlers = schema.get("handlers", {})
    if not handlers:
        raise PolicyError(f"{resource_type}: its resource schema declares no handler permissions")
    return {action for handler in HANDLERS for action in handlers.get(handler, {}).get("permissions", [])}


def derive(types: Iterable[str]) -> list[str]:
    actions = set(TEMPLATE_ACTIONS)
    for resource_type in types:
        actions |= type_actions(resource_type)
    return sorted(actions)


def _size(document: dict) -> int:
    return len(json.dumps(document, separators=(",", ":")))


def documents(actions: Sequence[str]) -> list[dict]:
    """The actions as managed-policy documents, each under IAM's size limit; a service's actions stay together."""
    by_service: dict[str, list[str]] = {}
    for action in actions:
        by_service.setdefault(action.split(":")[0], []).append(action)

    def document(chunk: list[str]) -> dict:
        return {"Version": "2012-10-17", "Statement": [{"Sid": "CloudFormationResourceHandlers", "Effect": "Allow",
                                                         "Action": chunk, "Resource": "*"}]}

    found: list[list[str]] = [[]]
    for service in sorted(by_service):
        if _size(document(found[-1] + by_service[service])) > MAX_POLICY_CHARS:
            found.append([])
        found[-1] += by_service[service]
        if _size(document(found[-1])) > MAX_POLICY_CHARS:
            raise PolicyError(f"{service}: its actions alone exceed {MAX_POLICY_CHARS} characters")
    return [document(chunk) for chunk in found if chunk]


def expected_files(assembly: Path) -> dict[str, str]:
    """{file name: its text}: every document of both sets."""
    files = {}
    for name, types in resource_types(assembly).items():
        for number, document in enumerate(documents(derive(types)), start=1):
            files[f"{name}-{number}.json"] = json.dumps(document, indent=2) + "\n"
    return files


def policy_names(project: str, kind: str, directory: Path = DIRECTORY) -> list[str]:
    """The managed policies' names of one set, as the committed files give them: `<project>-cdk-execution-<set>-<n>`."""
    numbers = sorted(int(path.stem.rsplit("-", 1)[1]) for path in directory.glob(f"{kind}-*.json"))
    if not numbers:
        raise PolicyError(f"{directory}: no {kind}-<n>.json: run `python -m pipeline.execution_policy --assembly cdk.out`")
    return [f"{project}-cdk-execution-{kind}-{number}" for number in numbers]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.execution_policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assembly", type=Path, default=Path("cdk.out"), help="the synthesized cloud assembly")
    parser.add_argument("--out", type=Path, default=DIRECTORY, help="where the policy documents go")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    try:
        files = expected_files(args.assembly)
    except AssemblyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    present = {path.name: path.read_text() for path in args.out.glob("*.json")} if args.out.is_dir() else {}
    if args.check:
        stale = sorted(name for name in files.keys() | present.keys() if files.get(name) != present.get(name))
        if stale:
            print(f"{args.out}: out of date ({', '.join(stale)}): run python -m pipeline.execution_policy", file=sys.stderr)
            return 1
        print(f"{args.out}: current ({len(files)} documents)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in present.keys() - files.keys():
        (args.out / name).unlink()
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(files)} documents to {args.out}: " + ", ".join(sorted(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
