#!/usr/bin/env python3
"""CDK app entry point: the only place that reads inputs (config file, package.json, CDK context)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from constructs_lib.jsii_kernel import limit_background_threads

# The CDK CLI always hands the app cdk.json's context (the feature flags the templates depend on, and `-c config=...`)
# in this variable (what does not fit goes to a file it names besides). Without it the app would fail deep in the CDK,
# after its kernel started, with a JavaScript stack trace.
CLI_CONTEXT_VARIABLE = "CDK_CONTEXT_JSON"
NOT_RUN_BY_THE_CLI = (
    "error: app.py is run by the CDK CLI, which passes it cdk.json's context: use `make synth` "
    "(or `cdk synth`, with `-c config=PATH` for another config file)"
)

if __name__ == "__main__" and CLI_CONTEXT_VARIABLE not in os.environ:  # before the kernel starts: the answer is immediate
    print(NOT_RUN_BY_THE_CLI, file=sys.stderr)
    sys.exit(2)

limit_background_threads()  # before the first aws_cdk import, which starts the CDK's Node.js kernel

from aws_cdk import App, Validations  # noqa: E402

from config.loader import DEFAULT_CONFIG_PATH, ConfigError, load_config  # noqa: E402
from constructs_lib.compliance import compliance_plugins  # noqa: E402
from pipeline.pipeline_stack import PipelineStack  # noqa: E402

ROOT = Path(__file__).resolve().parent


def pinned_version(package_name: str) -> str:
    """A tool's version pinned in package.json (and package-lock.json): the pipeline installs exactly this one."""
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    return package["devDependencies"][package_name]


def pinned_cli_version() -> str:
    return pinned_version("aws-cdk")


def config_file(given: str | None) -> str:
    """The config file as the pipeline's Synth step names it: relative to the repository's root (where CodeBuild
    checks it out); an absolute path when it lies outside (the pipeline could not build it: PipelineStack warns)."""
    path = Path(given).resolve() if given else DEFAULT_CONFIG_PATH
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def build_app(app: App) -> PipelineStack:
    given = app.node.try_get_context("config")
    config = load_config(given)
    stack = PipelineStack(
        app,
        f"{config.project.name.capitalize()}Pipeline",
        config=config,
        config_file=config_file(given),
        cli_version=pinned_cli_version(),
        cdk_assets_version=pinned_version("cdk-assets"),
    )
    # Registered once at the App: cdk-nag v3 plugins reach the pipeline stack and every Stage's stacks.
    Validations.of(app).add_plugins(*compliance_plugins(app))
    return stack


def main() -> int:
    app = App()
    try:
        build_app(app)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
