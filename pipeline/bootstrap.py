"""The one-time set-up, in order: the exact `cdk bootstrap` commands for the pipeline account and every environment,
then the connection hand-shake and the first deploy.

    python -m pipeline.bootstrap [--config FILE]                         # print the steps; needs no credentials
    python -m pipeline.bootstrap --apply --profile pipeline=tools --profile staging=stg --profile production=prd

With `--apply` it runs the bootstrap commands with the given AWS CLI profiles (keys: `pipeline`, an environment's
name, or an account id), in order, and stops at the first failure with its reason. `cdk bootstrap` changes nothing on
an account that is already bootstrapped the same way, so running it again is safe.
Exit status: 0 done; 1 a command failed; 2 bad input (config, a missing profile), one line, no traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config.loader import ConfigError, load_config
from config.model import AppConfig

QUALIFIER = "hnb659fds"  # the CDK bootstrap's default qualifier (the pipeline's roles name it)
EXECUTION_POLICY = "arn:aws:iam::aws:policy/AdministratorAccess"


@dataclass(frozen=True)
class Target:
    key: str  # "pipeline" or the environments' names, joined when they share an account and region
    account: str
    region: str
    trust: str | None  # the pipeline account, for the environments

    def command(self, profile: str | None = None) -> list[str]:
        command = ["npx", "cdk", "bootstrap", f"aws://{self.account}/{self.region}", "--qualifier", QUALIFIER,
                   "--cloudformation-execution-policies", EXECUTION_POLICY]
        if self.trust:
            command += ["--trust", self.trust, "--trust-for-lookup", self.trust]
        if profile:
            command += ["--profile", profile]
        return command


def targets(config: AppConfig) -> list[Target]:
    """The pipeline account, then each environment's account and region once, in promotion order."""
    found = [Target("pipeline", config.pipeline.account, config.pipeline.region, None)]
    for environment in config.environments:
        same = [t for t in found[1:] if (t.account, t.region) == (environment.account, environment.region)]
        if same:
            found[found.index(same[0])] = Target(f"{same[0].key}+{environment.name}", same[0].account, same[0].region,
                                                 same[0].trust)
        else:
            found.append(Target(environment.name, environment.account, environment.region, config.pipeline.account))
    return found


def plan(config: AppConfig, stack_name: str) -> list[str]:
    lines = ["One-time set-up, in order (every command is safe to run again):", ""]
    for number, target in enumerate(targets(config), start=1):
        what = "the pipeline (tools) account" if target.key == "pipeline" else (
            f"{target.key}: trusts the pipeline account to deploy and to look up")
        lines += [f"{number}. Bootstrap {what}:", f"   {' '.join(target.command())}"]
    step = len(targets(config)) + 1
    lines += [
        f"{step}. Finish the CodeConnections hand-shake in the pipeline account's console (Developer Tools > Settings >"
        " Connections > Update pending connection):",
        f"   {config.pipeline.connection_arn}",
        f"{step + 1}. Check everything before the first deploy: make doctor",
        f"{step + 2}. Deploy the pipeline once, with the pipeline account's credentials:",
        f"   make synth && npx cdk deploy {stack_name}",
        "   From then on every push to the branch deploys through the pipeline.",
    ]
    return lines


def parse_profiles(values: Sequence[str], config: AppConfig) -> dict[str, str]:
    profiles = {}
    known = {"pipeline", config.pipeline.account} | {e.name for e in config.environments} | {
        e.account for e in config.environments}
    for value in values:
        key, sep, profile = value.partition("=")
        if not sep or not profile or key not in known:
            raise ValueError(f"--profile {value!r}: expected NAME=PROFILE with NAME one of {', '.join(sorted(known))}")
        profiles[key] = profile
    return profiles


def profile_for(target: Target, profiles: dict[str, str]) -> str:
    for key in (*target.key.split("+"), target.account):
        if key in profiles:
            return profiles[key]
    raise ValueError(f"no --profile for {target.key} ({target.account}): give --profile {target.key.split('+')[0]}=PROFILE")


def apply(config: AppConfig, profiles: dict[str, str], run=subprocess.run) -> int:
    commands = [(target, target.command(profile_for(target, profiles))) for target in targets(config)]
    for target, command in commands:
        print(f"$ {' '.join(command)}", flush=True)
        result = run(command)
        if result.returncode != 0:
            print(f"error: bootstrapping {target.key} ({target.account}/{target.region}) failed with exit code "
                  f"{result.returncode}; fix the cause above and run again (what is done stays done)", file=sys.stderr)
            return 1
    print("Bootstrapped. Next: finish the connection hand-shake, then `make doctor`.")
    return 0


def main(argv: Sequence[str] | None = None, run=subprocess.run) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="the environments file (default config/environments.toml)")
    parser.add_argument("--apply", action="store_true", help="run the bootstrap commands")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME=PROFILE",
                        help="AWS CLI profile for `pipeline`, an environment or an account id (with --apply)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        profiles = parse_profiles(args.profile, config)
        if args.apply:
            for target in targets(config):
                profile_for(target, profiles)  # every profile before the first command
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.apply:
        print("\n".join(plan(config, f"{config.project.name.capitalize()}Pipeline")))
        return 0
    return apply(config, profiles, run)


if __name__ == "__main__":
    sys.exit(main())
