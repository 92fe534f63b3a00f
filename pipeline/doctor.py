"""Check the one-time set-up before (and after) the first deploy, with the pipeline account's credentials.

    python -m pipeline.doctor [--config FILE] [--assembly cdk.out] [--json]

One line per check: PASS, FAIL or WARN, what was found, and for a failure the command that fixes it. Checks that
cannot run yet (nothing deployed) are WARN. Exit status: 0 nothing failed; 1 a check failed; 2 no credentials or bad
input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from config.loader import ConfigError, load_config
from config.model import ECR_IMAGE, AppConfig
from pipeline.bootstrap import ADMINISTRATOR_ACCESS, QUALIFIER, Target, policy_document, targets

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"
MINIMUM_BOOTSTRAP_VERSION = 6  # what CDK Pipelines' cross-account deploy roles need, when no assembly says more
OPERATOR_SECRETS = ("coder/oidc", "litellm/anthropic-api-key", "custom-llm/api-key")


class DoctorError(Exception):
    """No credentials or bad input: one line, exit 2."""


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    found: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status} {self.name}: {self.found}"
        return text + (f"\n     fix: {self.fix}" if self.fix and self.status != PASS else "")


def required_bootstrap_version(assembly: Path | None) -> int:
    """The highest bootstrap version any stack of the assembly requires."""
    if assembly is None:
        return MINIMUM_BOOTSTRAP_VERSION
    versions = [MINIMUM_BOOTSTRAP_VERSION]
    try:
        for manifest in assembly.rglob("manifest.json"):
            for artifact in json.loads(manifest.read_text()).get("artifacts", {}).values():
                props = artifact.get("properties", {})
                versions += [props.get("requiresBootstrapStackVersion") or 0,
                             (props.get("lookupRole") or {}).get("requiresBootstrapStackVersion") or 0]
    except (OSError, json.JSONDecodeError) as error:
        raise DoctorError(f"{assembly}: {error}") from None
    if not (assembly / "manifest.json").exists():
        raise DoctorError(f"{assembly}: not a cloud assembly (no manifest.json); run `make synth` first")
    return max(versions)


def _error_code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)


class Doctor:
    def __init__(self, config: AppConfig, session_factory: Callable, required_version: int) -> None:
        self.config = config
        self.make_session = session_factory
        self.required = required_version
        self.session = session_factory()
        self.stack_name = f"{config.project.name.capitalize()}Pipeline"

    def run(self) -> list[Check]:
        from botocore.exceptions import NoCredentialsError

        try:
            identity = self.session.client("sts", region_name=self.config.pipeline.region).get_caller_identity()
        except NoCredentialsError:
            raise DoctorError("no AWS credentials: run with the pipeline account's credentials (e.g. AWS_PROFILE)") from None
        checks = [self._identity(identity["Account"])]
        if checks[0].status == FAIL:
            return checks + self._example_values()
        all_targets = targets(self.config)
        checks.append(self._pipeline_bootstrap(all_targets[0]))
        checks.append(self._execution_policies(self.session, all_targets[0], "pipeline account"))
        environment_sessions = {}
        for target in all_targets[1:]:
            found, session = self._environment_bootstrap(target)
            checks += found
            environment_sessions[target.key] = session
        checks += self._images(environment_sessions)
        checks.append(self._connection())
        checks += self._after_first_deploy(environment_sessions)
        return checks + self._example_values()

    # --- before the first deploy ------------------------------------------------------------------------------

    def _identity(self, account: str) -> Check:
        expected = self.config.pipeline.account
        if account == expected:
            return Check(PASS, "credentials", f"account {account}, the pipeline account")
        return Check(FAIL, "credentials", f"account {account}, not the pipeline account {expected}",
                     f"use credentials of account {expected} (e.g. export AWS_PROFILE=<its profile>)")

    def _version(self, session, target: Target, where: str) -> Check:
        name = f"/cdk-bootstrap/{QUALIFIER}/version"
        fix = " ".join(target.command())
        try:
            version = int(session.client("ssm", region_name=target.region).get_parameter(Name=name)["Parameter"]["Value"])
        except Exception as error:
            return Check(FAIL, f"{where} bootstrap version", f"{name} not readable ({_error_code(error)})", fix)
        if version < self.required:
            return Check(FAIL, f"{where} bootstrap version", f"{version}, older than the {self.required} required", fix)
        return Check(PASS, f"{where} bootstrap version", f"{version} (>= {self.required})")

    def _pipeline_bootstrap(self, target: Target) -> Check:
        cloudformation = self.session.client("cloudformation", region_name=target.region)
        fix = " ".join(target.command())
        try:
            (stack,) = cloudformation.describe_stacks(StackName="CDKToolkit")["Stacks"]
        except Exception as error:
            return Check(FAIL, "pipeline account bootstrapped", f"no CDKToolkit stack in {target.region} "
                         f"({_error_code(error)})", fix)
        if not stack["StackStatus"].endswith("_COMPLETE") or "ROLLBACK" in stack["StackStatus"]:
            return Check(FAIL, "pipeline account bootstrapped", f"CDKToolkit is {stack['StackStatus']}", fix)
        version = self._version(self.session, target, "pipeline account")
        return version if version.status == FAIL else Check(PASS, "pipeline account bootstrapped",
                                                            f"CDKToolkit {stack['StackStatus']}, {version.found}")

    def _execution_policies(self, session, target: Target, where: str) -> Check:
        """CloudFormation's execution role: the derived policies of pipeline/execution-policies/, current; a
        warning for AdministratorAccess (an older bootstrap) or for policies out of date (a new resource type)."""
        name = f"{where} execution policies"
        fix = f"make bootstrap ARGS=\"--apply --profile {target.key.split('+')[0]}=<profile>\" (or: {' '.join(target.command())})"
        try:
            (stack,) = session.client("cloudformation", region_name=target.region).describe_stacks(
                StackName="CDKToolkit")["Stacks"]
        except Exception as error:
            return Check(WARN, name, f"CDKToolkit not readable ({_error_code(error)})", fix)
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        attached = [arn for arn in parameters.get("CloudFormationExecutionPolicies", "").split(",") if arn]
        if ADMINISTRATOR_ACCESS in attached:
            return Check(WARN, name, "CloudFormation's execution role has AdministratorAccess: a deploy may do anything "
                         "in this account", fix)
        missing = [arn for arn in target.policy_arns() if arn not in attached]
        if missing:
            return Check(WARN, name, f"the bootstrap does not attach {', '.join(missing)}", fix)
        iam = session.client("iam", region_name=target.region)
        stale = []
        for policy, arn in zip(target.policies, target.policy_arns(), strict=True):
            try:
                default = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
                document = iam.get_policy_version(PolicyArn=arn, VersionId=default)["PolicyVersion"]["Document"]
            except Exception as error:
                stale.append(f"{policy} ({_error_code(error)})")
                continue
            document = json.loads(urllib.parse.unquote(document)) if isinstance(document, str) else document
            if document != json.loads(policy_document(policy)):
                stale.append(policy)
        if stale:
            return Check(WARN, name, f"out of date with pipeline/execution-policies/: {', '.join(stale)} (a release "
                         "with a new resource type would fail to deploy)", fix)
        return Check(PASS, name, f"{len(attached)} derived policies, current (actions of the stacks' resource types; "
                     "they still allow IAM role changes: no permissions boundary)")

    def _role(self, kind: str, target: Target) -> str:
        return f"arn:aws:iam::{target.account}:role/cdk-{QUALIFIER}-{kind}-role-{target.account}-{target.region}"

    def _environment_bootstrap(self, target: Target) -> tuple[list[Check], object | None]:
        where = f"{target.key} ({target.account}/{target.region})"
        fix = " ".join(target.command())
        lookup = self._role("lookup", target)
        try:
            credentials = self.session.client("sts", region_name=target.region).assume_role(
                RoleArn=lookup, RoleSessionName="doctor")["Credentials"]
        except Exception as error:
            return [Check(FAIL, f"{where} lookup role", f"cannot assume {lookup} ({_error_code(error)}): not "
                          "bootstrapped, or bootstrapped without --trust of the pipeline account", fix)], None
        session = self.make_session(aws_access_key_id=credentials["AccessKeyId"],
                                    aws_secret_access_key=credentials["SecretAccessKey"],
                                    aws_session_token=credentials["SessionToken"], region_name=target.region)
        checks = [self._version(session, target, where), self._execution_policies(session, target, where)]
        iam = session.client("iam", region_name=target.region)
        pipeline = self.config.pipeline.account
        for kind in ("lookup", "deploy", "file-publishing"):
            name = self._role(kind, target).rsplit("/", 1)[1]
            try:
                trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
            except Exception as error:
                checks.append(Check(FAIL, f"{where} {kind} role", f"{name} not found ({_error_code(error)})", fix))
                continue
            document = json.loads(trust) if isinstance(trust, str) else trust
            if pipeline in json.dumps(document):
                checks.append(Check(PASS, f"{where} {kind} role", f"trusts the pipeline account {pipeline}"))
            else:
                checks.append(Check(FAIL, f"{where} {kind} role", f"does not trust the pipeline account {pipeline}", fix))
        return checks, session

    def _images(self, environment_sessions: dict) -> list[Check]:
        """Each ECR image of the config (the Key Provisioner's: built from its own repository, not this one) exists,
        read through the environment's lookup role: a deploy otherwise waits for tasks that can never pull it."""
        checks = []
        for environment in self.config.environments:
            session = next((s for key, s in environment_sessions.items() if environment.name in key.split("+")), None)
            for field, image in environment.images.model_dump().items():
                match = ECR_IMAGE.match(image)
                if match is None or session is None:
                    continue
                name = f"{environment.name} image {field}"
                reference = {"imageTag": match["tag"]} if match["tag"] else {"imageDigest": match["digest"]}
                fix = (f"build the image and push it: docker push {image} (aws ecr get-login-password --region "
                       f"{match['region']} | docker login --username AWS --password-stdin {image.split('/')[0]})")
                try:
                    session.client("ecr", region_name=match["region"]).describe_images(
                        registryId=match["account"], repositoryName=match["repository"], imageIds=[reference])
                except Exception as error:
                    checks.append(Check(FAIL, name, f"{image} not found ({_error_code(error)})", fix))
                    continue
                checks.append(Check(PASS, name, f"{image} is in ECR"))
        return checks

    def _connection(self) -> Check:
        arn = self.config.pipeline.connection_arn
        if not arn:
            return Check(FAIL, "source connection", "not created yet ([pipeline] connection_arn is empty)",
                         f"aws codeconnections create-connection --provider-type GitHub --connection-name "
                         f"{self.config.project.name}-source --region {self.config.pipeline.region}, then put its ARN in "
                         "[pipeline] connection_arn and finish the hand-shake in the console")
        service = arn.split(":")[2]
        try:
            status = self.session.client(service, region_name=arn.split(":")[3]).get_connection(
                ConnectionArn=arn)["Connection"]["ConnectionStatus"]
        except Exception as error:
            return Check(FAIL, "source connection", f"{arn} not readable ({_error_code(error)})",
                         "create it in the pipeline account (Developer Tools > Settings > Connections) and put its ARN in"
                         " [pipeline] connection_arn")
        if status == "AVAILABLE":
            return Check(PASS, "source connection", "AVAILABLE")
        return Check(FAIL, "source connection", status,
                     "finish the hand-shake: Developer Tools > Settings > Connections > Update pending connection")

    # --- after the first deploy -------------------------------------------------------------------------------

    def _after_first_deploy(self, environment_sessions: dict) -> list[Check]:
        cloudformation = self.session.client("cloudformation", region_name=self.config.pipeline.region)
        try:
            cloudformation.describe_stacks(StackName=self.stack_name)
        except Exception:
            return [Check(WARN, "after the first deploy", f"{self.stack_name} is not deployed yet: subscription, "
                          "operator secrets and pipeline runs are checked once it is")]
        return [self._subscription(), *self._operator_secrets(environment_sessions), self._last_execution()]

    def _subscription(self) -> Check:
        email = self.config.pipeline.notification_email
        if not email:
            return Check(WARN, "notification e-mail", "none configured ([pipeline] notification_email): approvals and "
                         "failures reach nobody")
        region, account = self.config.pipeline.region, self.config.pipeline.account
        topic = f"arn:aws:sns:{region}:{account}:{self.config.project.name}-pipeline-notifications"
        subscriptions = self.session.client("sns", region_name=region).list_subscriptions_by_topic(TopicArn=topic)
        mine = [s for s in subscriptions.get("Subscriptions", []) if s.get("Endpoint") == email]
        if mine and all(s["SubscriptionArn"] != "PendingConfirmation" for s in mine):
            return Check(PASS, "notification e-mail", f"{email} confirmed")
        return Check(FAIL, "notification e-mail", f"{email} not confirmed",
                     f"open the 'AWS Notification - Subscription Confirmation' e-mail sent to {email} and confirm")

    def _operator_secrets(self, environment_sessions: dict) -> list[Check]:
        checks = []
        for environment in self.config.environments:
            session = next((s for key, s in environment_sessions.items() if environment.name in key.split("+")), None)
            if session is None:
                continue  # its bootstrap check failed above
            client = session.client("secretsmanager", region_name=environment.region)
            for short in OPERATOR_SECRETS:
                if short == "custom-llm/api-key" and not environment.has_gateway:
                    continue  # no corporate gateway here: no secret for it
                name = environment.secret_name(short)
                try:
                    versions = client.list_secret_version_ids(SecretId=name)["Versions"]
                except Exception as error:
                    checks.append(Check(WARN, f"{name}", f"not readable yet ({_error_code(error)}): {environment.name} "
                                        "not deployed?"))
                    continue
                if len(versions) >= 2:
                    checks.append(Check(PASS, name, "set by a person (more than the generated placeholder)"))
                else:
                    checks.append(Check(FAIL, name, "still the generated placeholder",
                                        f"aws secretsmanager put-secret-value --secret-id {name} --secret-string '<value>'"
                                        " (README: operator-supplied secrets)"))
        return checks

    def _last_execution(self) -> Check:
        name = f"{self.config.project.name}-platform"
        try:
            executions = self.session.client("codepipeline", region_name=self.config.pipeline.region).list_pipeline_executions(
                pipelineName=name, maxResults=1)["pipelineExecutionSummaries"]
        except Exception as error:
            return Check(WARN, "last pipeline run", f"{name} not readable ({_error_code(error)})")
        if not executions:
            return Check(WARN, "last pipeline run", "none yet")
        status = executions[0]["status"]
        if status == "Succeeded":
            return Check(PASS, "last pipeline run", status)
        if status in ("InProgress", "Stopping"):
            return Check(WARN, "last pipeline run", status)
        return Check(FAIL, "last pipeline run", status,
                     f"aws codepipeline get-pipeline-execution --pipeline-name {name} --pipeline-execution-id "
                     f"{executions[0].get('pipelineExecutionId', '<id>')}")

    def _example_values(self) -> list[Check]:
        found = self.config.pipeline.example_values() + [v for e in self.config.environments for v in e.example_values()]
        return [Check(FAIL, "example value", f"{field} = {value!r}", "set the real value in the config file")
                for field, value in found] or [Check(PASS, "example values", "none left in the config")]


def main(argv: Sequence[str] | None = None, session_factory: Callable | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="the environments file (default config/environments.toml)")
    parser.add_argument("--assembly", type=Path, help="cdk.out: the bootstrap version its stacks require")
    parser.add_argument("--json", action="store_true", help="JSON instead of lines")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        required = required_bootstrap_version(args.assembly)
        if session_factory is None:
            import boto3

            session_factory = boto3.session.Session
        checks = Doctor(config, session_factory, required).run()
    except (ConfigError, DoctorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
        counts = {status: sum(c.status == status for c in checks) for status in (PASS, WARN, FAIL)}
        print(f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed")
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
