"""The one-time set-up, in order: the exact `cdk bootstrap` commands for the pipeline account and every environment,
then the connection hand-shake and the first deploy.

    python -m pipeline.bootstrap [--config FILE]                         # print the steps; needs no credentials
    python -m pipeline.bootstrap --apply --profile pipeline=tools --profile staging=stg --profile production=prd

CloudFormation's execution role gets the policies of pipeline/execution-policies/ (derived from the
synthesized stacks: python -m pipeline.execution_policy), created in each account as customer managed policies
`<project>-cdk-execution-<set>-<n>`, never AdministratorAccess.

With `--apply` it creates or updates those policies (a new default version when a document changed) and runs the
bootstrap commands with the given AWS CLI profiles (keys: `pipeline`, an environment's name, or an account id), in
order, and stops at the first failure with its reason. `cdk bootstrap` changes nothing on an account that is already
bootstrapped the same way, so running it again is safe; run it again after a release adds a resource type (the
policies' files change with it).
Exit status: 0 done; 1 a command failed; 2 bad input (config, a missing profile), one line, no traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config.loader import ConfigError, load_config
from config.model import AppConfig
from pipeline.execution_policy import DIRECTORY as POLICY_DIRECTORY
from pipeline.execution_policy import PolicyError, policy_names

QUALIFIER = "hnb659fds"  # the CDK bootstrap's default qualifier (the pipeline's roles name it)
ADMINISTRATOR_ACCESS = "arn:aws:iam::aws:policy/AdministratorAccess"
BOOTSTRAP_OUTPUT = "build/bootstrap.out"  # where `cdk bootstrap` synthesizes the app (not cdk.out)


@dataclass(frozen=True)
class Target:
    key: str  # "pipeline" or the environments' names, joined when they share an account and region
    account: str
    region: str
    trust: str | None  # the pipeline account, for the environments
    policies: tuple[str, ...] = ()  # the execution role's customer managed policies (names)

    def policy_arns(self) -> list[str]:
        return [f"arn:aws:iam::{self.account}:policy/{name}" for name in self.policies]

    def command(self, profile: str | None = None) -> list[str]:
        # The CLI synthesizes the app on the way: into a folder of its own, never over the assembly in cdk.out.
        command = ["npx", "cdk", "bootstrap", f"aws://{self.account}/{self.region}", "--qualifier", QUALIFIER,
                   "--output", BOOTSTRAP_OUTPUT, "--cloudformation-execution-policies", ",".join(self.policy_arns())]
        if self.trust:
            command += ["--trust", self.trust, "--trust-for-lookup", self.trust]
        if profile:
            command += ["--profile", profile]
        return command


def targets(config: AppConfig) -> list[Target]:
    """The pipeline account, then each environment's account and region once, in promotion order. An account and region
    that hosts both the pipeline and an environment is bootstrapped once, with both policy sets and the trust. (An
    environment in another region than the pipeline's needs nothing more: CDK Pipelines' support stack there is
    deployed with the pipeline region's bootstrap roles and needs no bootstrap of its own.)"""
    project = config.project.name
    pipeline_policies, platform_policies = (tuple(policy_names(project, kind)) for kind in ("pipeline", "platform"))
    found = [Target("pipeline", config.pipeline.account, config.pipeline.region, None, pipeline_policies)]
    for environment in config.environments:
        same = [t for t in found if (t.account, t.region) == (environment.account, environment.region)]
        if same:
            target = same[0]
            policies = tuple(dict.fromkeys((*target.policies, *platform_policies)))
            found[found.index(target)] = Target(f"{target.key}+{environment.name}", target.account, target.region,
                                                config.pipeline.account, policies)
        else:
            found.append(Target(environment.name, environment.account, environment.region, config.pipeline.account,
                                platform_policies))
    return found


def policy_document(name: str) -> str:
    """The committed document of a policy `<project>-cdk-execution-<set>-<n>`."""
    kind, number = name.rsplit("-", 2)[-2:]
    return (POLICY_DIRECTORY / f"{kind}-{number}.json").read_text()


def create_policy_command(target: Target, name: str) -> str:
    kind, number = name.rsplit("-", 2)[-2:]
    path = (POLICY_DIRECTORY / f"{kind}-{number}.json").relative_to(POLICY_DIRECTORY.parents[1])
    return f"aws iam create-policy --policy-name {name} --policy-document file://{path}"


def ensure_policies(iam, target: Target) -> list[str]:
    """Create each execution policy of `target`, or give it a new default version when its document changed (IAM keeps
    five versions: the oldest other one goes first). Returns what it did, one line each."""
    done = []
    for name, arn in zip(target.policies, target.policy_arns(), strict=True):
        document = policy_document(name)
        try:
            policy = iam.get_policy(PolicyArn=arn)["Policy"]
        except iam.exceptions.NoSuchEntityException:
            iam.create_policy(PolicyName=name, PolicyDocument=document,
                              Description="CloudFormation execution role: the actions the platform's resource types need")
            done.append(f"created {name}")
            continue
        current = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"]
        current = json.loads(urllib.parse.unquote(current)) if isinstance(current, str) else current
        if current == json.loads(document):
            done.append(f"{name} is current")
            continue
        versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
        if len(versions) >= 5:
            oldest = min((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
            iam.delete_policy_version(PolicyArn=arn, VersionId=oldest["VersionId"])
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=document, SetAsDefault=True)
        done.append(f"updated {name}")
    return done


def make_args(config_path: Path | None) -> str:
    """` CONFIG=<file>` for make when the config is not the default one (as the repository names it)."""
    if config_path is None:
        return ""
    path = config_path.resolve()
    root = POLICY_DIRECTORY.parents[1]
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return "" if shown == "config/environments.toml" else f" CONFIG={shlex.quote(shown)}"


def plan(config: AppConfig, stack_name: str, config_path: Path | None = None) -> list[str]:
    lines = ["One-time set-up, in order (every command is safe to run again):", ""]
    first = 1
    if not config.pipeline.connection_arn or "/00000000-" in config.pipeline.connection_arn:
        lines += ["1. Create the source connection in the pipeline account (GitHub, GitLab or Bitbucket), put the ARN it "
                  "prints in [pipeline] connection_arn, and run make bootstrap again:",
                  f"   aws codeconnections create-connection --provider-type GitHub --connection-name "
                  f"{config.project.name}-source --region {config.pipeline.region}"]
        first = 2
    listed: set[tuple[str, str]] = set()
    for number, target in enumerate(targets(config), start=first):
        what = "the pipeline (tools) account" if target.key == "pipeline" else (
            f"{target.key}: trusts the pipeline account to deploy and to look up")
        if all((target.account, name) in listed for name in target.policies):
            lines += [f"{number}. Bootstrap {what}, with the execution policies created above (IAM is global):"]
        else:
            lines += [f"{number}. Bootstrap {what}: CloudFormation's execution policies (derived from the "
                      "stacks, pipeline/execution-policies/; `--apply` updates them when they exist), then the bootstrap:"]
        # IAM is global: an account's policies are created once, in the first of its regions.
        lines += [f"   {create_policy_command(target, name)}" for name in target.policies if (target.account, name) not in listed]
        listed |= {(target.account, name) for name in target.policies}
        lines.append(f"   {' '.join(target.command())}")
    step = len(targets(config)) + first
    lines.append(f"{step}. Before the first deploy of each environment: its Key Provisioner image (built from that "
                 "application's own repository) pushed to ECR, and DNS for its certificate:")
    for environment in config.environments:
        lines.append(f"   {environment.name}: push {environment.images.key_provisioner}")
        if environment.hosted_zone_id:
            lines.append(f"   {environment.name}: ACM validates {environment.domain} and *.{environment.domain} in hosted zone "
                         f"{environment.hosted_zone_id} by itself")
        else:
            lines.append(f"   {environment.name}: the first deploy waits until the CNAME records ACM shows for "
                         f"{environment.domain} and *.{environment.domain} (ACM console) are in your DNS")
        lines.append(f"   {environment.name}: once deployed, point {environment.domain} and *.{environment.domain} at the "
                     f"Platform stack's output LoadBalancerDnsName (internal: a zone your network resolves)")
    step += 1
    lines += [
        f"{step}. Finish the CodeConnections hand-shake in the pipeline account's console (Developer Tools > Settings >"
        " Connections > Update pending connection):",
        f"   {config.pipeline.connection_arn or '(the connection of step 1)'}",
        f"{step + 1}. Check everything before the first deploy: make doctor{make_args(config_path)}",
        f"{step + 2}. Deploy the pipeline once, with the pipeline account's credentials:",
        f"   make synth{make_args(config_path)} && npx cdk deploy --app cdk.out {stack_name}",
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


def apply(config: AppConfig, profiles: dict[str, str], run=subprocess.run, iam_client=None, account_of=None,
          config_path: Path | None = None) -> int:
    """`iam_client(profile)`: an IAM client of that profile's account; `account_of(profile)`: the account its
    credentials belong to (boto3 by default). Every profile is checked before anything changes."""
    if iam_client is None or account_of is None:
        import boto3

        def iam_client(profile: str):  # noqa: F811 - the default
            return boto3.session.Session(profile_name=profile).client("iam")

        def account_of(profile: str) -> str:  # noqa: F811 - the default
            return boto3.session.Session(profile_name=profile).client("sts").get_caller_identity()["Account"]

    commands = [(target, target.command(profile_for(target, profiles))) for target in targets(config)]
    wrong = []
    for target in targets(config):
        profile = profile_for(target, profiles)
        try:
            found = account_of(profile)
        except Exception as error:
            wrong.append(f"profile {profile} ({target.key}): no credentials ({type(error).__name__}: {error})")
            continue
        if found != target.account:
            wrong.append(f"profile {profile} ({target.key}) is account {found}, not {target.account}")
    if wrong:
        print("error: nothing was changed; " + "; ".join(wrong), file=sys.stderr)
        return 2
    for target, command in commands:
        try:
            for line in ensure_policies(iam_client(profile_for(target, profiles)), target):
                print(f"  {line}", flush=True)
        except Exception as error:
            print(f"error: the execution policies of {target.key} ({target.account}) could not be put: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
            return 1
        print(f"$ {' '.join(command)}", flush=True)
        result = run(command)
        if result.returncode != 0:
            print(f"error: bootstrapping {target.key} ({target.account}/{target.region}) failed with exit code "
                  f"{result.returncode}; fix the cause above and run again (what is done stays done)", file=sys.stderr)
            return 1
    print(f"Bootstrapped. Next: finish the connection hand-shake, then `make doctor{make_args(config_path)}`.")
    return 0


def main(argv: Sequence[str] | None = None, run=subprocess.run, iam_client=None, account_of=None) -> int:
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
    except (ValueError, PolicyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.apply:
        print("\n".join(plan(config, f"{config.project.name.capitalize()}Pipeline", args.config)))
        return 0
    return apply(config, profiles, run, iam_client, account_of, args.config)


if __name__ == "__main__":
    sys.exit(main())
