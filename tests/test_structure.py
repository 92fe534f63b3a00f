"""The code's shape: one-way layering, the config's JSON Schema, the service catalogue, the optimized app."""

from __future__ import annotations

import ast
import json
import tomllib

import jsonschema
import pytest

from config import schema
from tests.assembly import ROOT

# config -> constructs_lib -> stacks -> stages -> pipeline; app.py on top. A package imports only from below it.
ALLOWED_IMPORTS = {
    "config": {"config"},
    "constructs_lib": {"config", "constructs_lib"},
    "stacks": {"config", "constructs_lib", "stacks"},
    "stages": {"config", "constructs_lib", "stacks", "stages"},
    "pipeline": {"config", "constructs_lib", "stacks", "stages", "pipeline"},
}


def _module(path) -> tuple[str, str]:
    """A project file's module name and the package its relative imports start from."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), ".".join(parts[:-1])
    return ".".join(parts), ".".join(parts[:-1])


def _imports(tree: ast.Module, package: str, top_level_only: bool = False) -> set[str]:
    """The modules `tree` imports, relative imports resolved from `package`. top_level_only: those that run when the
    module is imported (module-level statements and their if/try blocks, not function bodies or TYPE_CHECKING)."""
    nodes = list(tree.body) if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    while nodes:
        node = nodes.pop()
        if top_level_only and isinstance(node, ast.If):
            type_checking = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            nodes.extend(node.orelse if type_checking else node.body + node.orelse)
        elif top_level_only and isinstance(node, ast.Try):
            nodes.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_layers_import_only_from_below(package):
    project = set(ALLOWED_IMPORTS)
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(ast.parse(path.read_text()), _module(path)[1]):
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
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BYTECODE_STAMP)" in makefile.split("\nsetup:", 1)[1].split("##", 1)[0]  # synth's set-up compiles it
    compile_recipe = makefile.split("\n$(BYTECODE_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "compileall -q -j 0 -o 1 $(VENV)/lib" in compile_recipe


# --- collecting the tests starts no CDK kernel -------------------------------------------------------------------

CDK_PACKAGES = {"aws_cdk", "constructs", "jsii", "cdk_nag"}


def test_collecting_the_tests_imports_no_cdk():
    """Every pytest worker collects (imports) every test module; importing `aws_cdk` costs ~2.5 s of CPU and a
    Node.js kernel. Test modules import the CDK, or a project module that does, inside the tests that build
    constructs (tests/test_constructs.py), never at module level."""
    paths = [p for package in ("config", "constructs_lib", "stacks", "stages", "pipeline", "tests")
             for p in (ROOT / package).rglob("*.py") if "lambdas" not in p.parts] + [ROOT / "app.py"]
    # What each module imports when it is imported.
    imports = {_module(p)[0]: _imports(ast.parse(p.read_text()), _module(p)[1], top_level_only=True) for p in paths}
    # A project module needs the CDK when it imports it at module level, or imports a module that does.
    needs_cdk = {name for name, found in imports.items() if any(i.split(".")[0] in CDK_PACKAGES for i in found)}
    while more := {name for name, found in imports.items() if name not in needs_cdk and found & needs_cdk}:
        needs_cdk |= more
    assert {"app", "constructs_lib.stable_ids", "stacks.network_stack"} <= needs_cdk  # the check sees the CDK
    assert "constructs_lib.service_catalogue" not in needs_cdk
    collected = sorted(name for name in imports if name.startswith("tests.") and name != "tests.apps.planted_finding")
    offenders = {name: sorted(imports[name] & (needs_cdk | CDK_PACKAGES)) for name in collected}
    assert {name: found for name, found in offenders.items() if found} == {}
