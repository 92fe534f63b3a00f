"""Assets of this project's Python Lambda handlers, built on the synth machine without Docker or downloads.

A handler lives in `constructs_lib/lambdas/<name>/`. Its asset holds the handler's `*.py` files, the shared
modules of `constructs_lib/lambdas/shared/`, and, for a handler with a `requirements.txt`, the packages that
`make setup` installed from it into `build/lambda-deps/<name>/` (pinned, hashed, pure Python). `cdk synth` only
copies files; it never runs pip or Docker.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, Duration, ILocalBundling, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from constructs_lib.compliance import acknowledge

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS_DIR = Path(__file__).resolve().parent / "lambdas"
SHARED_DIR = LAMBDAS_DIR / "shared"
DEPENDENCIES_DIR = ROOT / "build" / "lambda-deps"
INSTALLED_MARKER = ".installed"
RUNTIME = lambda_.Runtime.PYTHON_3_14  # also LAMBDA_PYTHON in the Makefile (the packages' target version)
LOG_RETENTION = logs.RetentionDays.ONE_YEAR


def encrypted_log_group(scope: Construct, construct_id: str, key: kms.IKey, name: str | None = None) -> logs.LogGroup:
    """A log group kept one year, encrypted with the environment's logs key, retained with the stack's data."""
    return logs.LogGroup(
        scope, construct_id, log_group_name=name, retention=LOG_RETENTION, encryption_key=key,
        removal_policy=RemovalPolicy.RETAIN,
    )


def logs_key(scope: Construct, construct_id: str, *, alias: str, description: str) -> kms.Key:
    """A rotated KMS key (RETAIN) that CloudWatch Logs of this account and region may use for log groups."""
    stack = Stack.of(scope)
    key = kms.Key(scope, construct_id, alias=alias, description=description, enable_key_rotation=True,
                  removal_policy=RemovalPolicy.RETAIN)
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudWatchLogsOfThisAccount",
        principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
        actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
        resources=["*"],
        conditions={"ArnLike": {
            "kms:EncryptionContext:aws:logs:arn": f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:*"}},
    ))
    return key


class LambdaDependenciesMissing(RuntimeError):
    pass


def dependencies_dir(name: str) -> Path | None:
    """Where `make setup` put the handler's packages; None for a handler without requirements."""
    if not (LAMBDAS_DIR / name / "requirements.txt").exists():
        return None
    target = DEPENDENCIES_DIR / name
    if not (target / INSTALLED_MARKER).exists():
        raise LambdaDependenciesMissing(
            f"{target} is missing or incomplete: run `make setup` (it installs "
            f"constructs_lib/lambdas/{name}/requirements.txt there) before `cdk synth`"
        )
    return target


@jsii.implements(ILocalBundling)
class _CopyPackage:
    def __init__(self, modules: list[Path], dependencies: Path | None) -> None:
        self._modules = modules
        self._dependencies = dependencies

    def try_bundle(self, output_dir: str, _options: object = None) -> bool:
        out = Path(output_dir)
        if self._dependencies is not None:
            shutil.copytree(
                self._dependencies, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(INSTALLED_MARKER, "__pycache__")
            )
        for module in self._modules:
            shutil.copy2(module, out / module.name)
        return True


def _asset(source_dir: Path, bundler: _CopyPackage) -> lambda_.Code:
    return lambda_.Code.from_asset(
        str(source_dir),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            image=DockerImage.from_registry("local-bundling-only"),  # never used: local bundling always succeeds
            local=bundler,
        ),
    )


def python_code(name: str) -> lambda_.Code:
    """The asset of handler `name`; its hash is the built folder's content (sources and pinned packages)."""
    handler_dir = LAMBDAS_DIR / name
    if not (handler_dir / "index.py").exists():
        raise FileNotFoundError(f"no Lambda handler at {handler_dir}/index.py")
    modules = sorted(SHARED_DIR.glob("*.py")) + sorted(handler_dir.glob("*.py"))
    return _asset(handler_dir, _CopyPackage(modules, dependencies_dir(name)))


BASIC_EXECUTION = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]"
VPC_EXECUTION = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]"


@dataclass(frozen=True)
class FunctionNetwork:
    vpc: ec2.IVpc
    subnets: ec2.SubnetSelection
    security_group: ec2.ISecurityGroup


def python_function(
    scope: Construct,
    construct_id: str,
    *,
    code: lambda_.Code,
    handler: str,
    timeout: Duration,
    description: str,
    logs_key: kms.IKey,
    log_group_id: str,
    invoked_by: str,
    network: FunctionNetwork | None = None,
    why_outside_vpc: str = "",
    environment: dict[str, str] | None = None,
    reasons: dict[str, str] | None = None,
) -> lambda_.Function:
    """A Lambda of this project: the Python runtime of RUNTIME, an encrypted log group kept a year (`log_group_id`,
    beside the function), private subnets only when `network` is given, and the acknowledgments every such
    function shares: CDK's AWS-managed execution policies, no DLQ and no reserved concurrency for a function that a
    deploy or the pipeline invokes synchronously, a handful of times (`reasons` replaces those that do not fit)."""
    function = lambda_.Function(
        scope,
        construct_id,
        runtime=RUNTIME,
        handler=handler,
        code=code,
        timeout=timeout,
        memory_size=256,
        vpc=network.vpc if network else None,
        vpc_subnets=network.subnets if network else None,
        security_groups=[network.security_group] if network else None,
        allow_public_subnet=False if network else None,
        log_group=encrypted_log_group(scope, log_group_id, logs_key),
        environment=environment,
        description=description,
    )
    acknowledgments = {
        BASIC_EXECUTION: "The AWS-maintained policy that lets the function write its own CloudWatch Logs; the "
        "function's own permissions are in its scoped inline policy.",
        "LambdaDLQ": f"Invoked synchronously by {invoked_by}, which sees and reports every failure: no event is "
        "queued, so there is nothing for a dead-letter queue to keep.",
        "LambdaConcurrency": f"Invoked only by {invoked_by}, a few times per deployment; reserving concurrency "
        "would take capacity from the account (and fails in new accounts with the minimum quota).",
    }
    if network:
        acknowledgments[VPC_EXECUTION] = (
            "The AWS-maintained policy that lets Lambda manage the function's network interfaces in the VPC."
        )
    else:
        acknowledgments["LambdaInsideVPC"] = why_outside_vpc
    acknowledge(function, {**acknowledgments, **(reasons or {})})
    return function
