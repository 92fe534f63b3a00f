"""The code's shape: one-way layering, the config's JSON Schema, construct groups that keep logical ids."""

from __future__ import annotations

import ast
import json
import tomllib

import jsonschema
import pytest
from aws_cdk import App, CfnResource, Stack
from constructs import Construct

from config import schema
from constructs_lib.stable_ids import Group, unique_id
from tests.assembly import ROOT

# config -> constructs_lib -> stacks -> stages -> pipeline; app.py on top. A package imports only from below it.
ALLOWED_IMPORTS = {
    "config": {"config"},
    "constructs_lib": {"config", "constructs_lib"},
    "stacks": {"config", "constructs_lib", "stacks"},
    "stages": {"config", "constructs_lib", "stacks", "stages"},
    "pipeline": {"config", "constructs_lib", "stacks", "stages", "pipeline"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_layers_import_only_from_below(package):
    project = set(ALLOWED_IMPORTS)
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in project:
                    assert top in ALLOWED_IMPORTS[package], f"{path.relative_to(ROOT)} imports {name}"


def test_no_stack_module_over_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "stacks").glob("*.py")}
    assert max(sizes.values()) <= 300, sizes


# --- the config's JSON Schema ------------------------------------------------------------------------------------


def test_committed_schema_is_the_models():
    assert schema.SCHEMA_PATH.read_text() == schema.render(), "stale: run `python -m config.schema`"


@pytest.mark.parametrize("path", ["config/environments.toml", "config/examples/three-environments.toml"])
def test_config_files_point_at_the_schema_and_pass_it(path):
    file = ROOT / path
    first_line = file.read_text().splitlines()[0]
    assert first_line.startswith("#:schema ")
    assert (file.parent / first_line.removeprefix("#:schema ")).resolve() == schema.SCHEMA_PATH
    jsonschema.validate(tomllib.loads(file.read_text()), json.loads(schema.SCHEMA_PATH.read_text()))


def test_schema_refuses_what_the_loader_refuses():
    data = tomllib.loads((ROOT / "config" / "environments.toml").read_text())
    data["environments"][0]["database"]["multi_zone"] = True  # a typo
    data["environments"][1]["services"]["litellm_desired_count"] = 0
    errors = list(jsonschema.Draft202012Validator(json.loads(schema.SCHEMA_PATH.read_text())).iter_errors(data))
    messages = sorted(e.message for e in errors)
    assert any("multi_zone" in m for m in messages) and any("0 is less than the minimum of 1" in m for m in messages)


# --- groups keep logical ids -------------------------------------------------------------------------------------


def _logical_ids(stack: Stack) -> list[str]:
    template = App.of(stack).synth().get_stack_by_name(stack.stack_name).template
    return sorted(template["Resources"])


def test_unique_id_is_cdks():
    stack = Stack(App(), "Plain")
    inner = Construct(Construct(stack, "Outer"), "Inner-Part")
    resources = [CfnResource(inner, "Resource", type="Test::Thing"), CfnResource(stack, "Top", type="Test::Thing"),
                 CfnResource(Construct(stack, "Default"), "Resource", type="Test::Thing")]
    ids = {stack.resolve(r.logical_id) for r in resources}
    assert ids == {unique_id(["Outer", "Inner-Part", "Resource"]), unique_id(["Top"]), unique_id(["Default", "Resource"])}


def test_a_group_keeps_its_resources_logical_ids():
    app = App()
    plain, grouped = Stack(app, "Plain"), Stack(app, "Grouped")
    for scope in (plain, Group(grouped, "Database")):
        CfnResource(Construct(scope, "Postgres"), "Resource", type="Test::Thing")
        CfnResource(scope, "Secret", type="Test::Thing")
    assert _logical_ids(plain) == _logical_ids(grouped) == ["Postgres9DC8BB04", "Secret"]


def test_a_group_is_one_call_from_cdk_into_python_not_one_per_construct(monkeypatch):
    """Each aspect call crosses from Node.js into Python: a group's aspect runs once, however many constructs it holds."""
    from constructs_lib import stable_ids

    visits = []
    original = stable_ids._KeepLogicalIds.visit
    monkeypatch.setattr(stable_ids._KeepLogicalIds, "visit", lambda self, node: visits.append(node) or original(self, node))
    app = App()
    group = Group(Stack(app, "Grouped"), "Many")
    for index in range(20):
        CfnResource(Construct(group, f"Part{index}"), "Resource", type="Test::Thing")
    assert _logical_ids(Stack.of(group)) == sorted(unique_id([f"Part{i}", "Resource"]) for i in range(20))
    assert len(visits) == 1


def test_an_element_added_to_a_group_after_its_ids_were_kept_fails_synth():
    """CDK visits in tree order: an aspect that adds to a group once the group's ids are kept would leave the new
    resource with the group's id in its logical id (CloudFormation would replace it on the move). Synth refuses."""
    import jsii
    from aws_cdk import Aspects, IAspect

    @jsii.implements(IAspect)
    class AddsLate:
        def visit(self, node) -> None:
            if node.node.id == "Early":  # visited after the group's keeper
                CfnResource(Construct(node.node.scope, "Late"), "Resource", type="Test::Thing")

    app = App()
    stack = Stack(app, "Grouped")
    CfnResource(Construct(Group(stack, "Database"), "Early"), "Resource", type="Test::Thing")
    Aspects.of(stack).add(AddsLate())
    with pytest.raises(RuntimeError, match=r"Grouped/Database/Late/Resource: added to the group after its logical ids"):
        app.synth()


def test_groups_do_not_nest():
    with pytest.raises(TypeError, match="a Group inside a Group"):
        Group(Group(Stack(App(), "S"), "Outer"), "Inner")


# --- the service catalogue is what gets deployed -----------------------------------------------------------------


def test_every_catalogue_route_is_a_listener_rule_to_the_services_port_and_health(assembly, stage, env_config):
    from constructs_lib.service_catalogue import routed

    templates = [assembly.stack(stage, layer) for layer in ("Platform", "Observability")]
    resources = {lid: r for t in templates for lid, r in t.resources.items()}
    deployed = {}
    for rule in (r["Properties"] for r in resources.values() if r["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule"):
        group = resources[rule["Actions"][-1]["TargetGroupArn"]["Ref"]]["Properties"]
        (host,) = rule["Conditions"][0]["HostHeaderConfig"]["Values"]
        signed_in = rule["Actions"][0]["Type"] == "authenticate-oidc"
        deployed[rule["Priority"]] = (host, group["Port"], group["HealthCheckPath"], signed_in)
    expected = {
        route.priority: (route.host_name(env_config.domain), service.port, service.health_path, route.sign_in)
        for service in routed() for route in service.routes
    }
    assert deployed == expected


# --- the app runs optimized, on byte code compiled for it -------------------------------------------------------


def test_the_app_runs_optimized_on_byte_code_of_the_same_level():
    """cdk.json starts the app with `python -O`: jsii's Python-side argument checks are off (its Node.js kernel checks
    every argument again), ~8 % of a synth. `make setup` byte-compiles at that level (1); with a mismatch, and no
    .pyc written (PYTHONDONTWRITEBYTECODE), every synth would compile the CDK libraries from source again."""
    command = json.loads((ROOT / "cdk.json").read_text())["app"].split()
    assert command[:3] == [".venv/bin/python", "-O", "app.py"]
    setup = (ROOT / "Makefile").read_text().split("$(PY_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "compileall -q -j 0 -o 1 $(VENV)/lib" in setup
