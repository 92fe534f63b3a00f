"""The delivery pipeline: source -> synth -> self-mutation -> each environment in promotion order (e.g. staging ->
approval -> production)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import jsii
import yaml
from aws_cdk import Annotations, Duration, Environment, IAnyProducer, IResolveContext, Lazy, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as codepipeline_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from config.markers import EXAMPLE_VALUE
from config.model import AppConfig, EnvironmentConfig
from constructs_lib.compliance import acknowledge, wildcard_findings
from constructs_lib.log_bucket import log_bucket
from constructs_lib.python_lambda import logs_key, python_code, python_function
from constructs_lib.secure_bucket import SecureBucket
from constructs_lib.smoke_probe import smoke_role_arn, smoke_step_role_name
from stages.platform_stage import PlatformStage

BUILDSPECS = Path(__file__).resolve().parents[1] / "buildspecs"
SMOKE_DEADLINE_SECONDS = 240

# CodeBuild image with Node.js 22 and Python 3.12 runtimes.
BUILD_IMAGE = codebuild.LinuxBuildImage.STANDARD_7_0
SYNTH_COMMAND = "make synth"
DEFAULT_CONFIG_FILE = "config/environments.toml"
CONFIG_OUTSIDE_REPOSITORY = "coder:config-outside-repository"
CODESTAR_NOTIFICATIONS = "codestar-notifications.amazonaws.com"
CDK_QUALIFIER = "hnb659fds"  # the CDK bootstrap's default qualifier: its roles are cdk-<qualifier>-<role>-<account>-<region>


class PipelineStack(Stack):
    """A self-mutating CDK pipeline in the pipeline (tools) account.

    Non-obvious defaults:
    - Pipeline type V2; cross-account KMS keys (rotated) so Stages in other accounts can read artifacts.
    - The synth step runs the README's `make synth` (same set-up and the same compliance packs as a laptop).
    - The CDK CLI (self-mutation) and cdk-assets (asset publishing) are the versions pinned in package.json.
    - One Stage per configured environment, in promotion order; an environment with `requires_approval` deploys only
      after a person approves its ManualApprovalStep.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, cli_version: str, cdk_assets_version: str,
        config_file: str = DEFAULT_CONFIG_FILE, **kwargs,
    ) -> None:
        """`config_file`: the file `config` came from, relative to the repository's root: the Synth step builds that
        file, and the Review steps read its allowances, so that the pipeline deploys what it was deployed with."""
        super().__init__(
            scope,
            construct_id,
            env=Environment(account=config.pipeline.account, region=config.pipeline.region),
            description=f"{config.project.name}: delivery pipeline ({_promotion(config)})",
            **kwargs,
        )
        source = pipelines.CodePipelineSource.connection(
            config.pipeline.repository,
            config.pipeline.branch,
            connection_arn=config.pipeline.source_connection_arn(),
            trigger_on_push=True,
        )
        self._logs_bucket = log_bucket(
            self,
            "AccessLogsBucket",
            bucket_name=f"{config.project.name}-pipeline-access-logs-{self.account}-{self.region}",
            s3_access_prefix="artifacts/",
        )
        self._config_file = config_file
        if Path(config_file).is_absolute():
            Annotations.of(self).add_warning_v2(
                CONFIG_OUTSIDE_REPOSITORY, f"{config_file} is outside the repository: the pipeline's Synth step, which "
                "builds the checked-out repository, cannot read it. Keep the config file in the repository.")
        synth = pipelines.CodeBuildStep(
            "Synth",
            input=source,
            commands=[SYNTH_COMMAND if config_file == DEFAULT_CONFIG_FILE else f"{SYNTH_COMMAND} CONFIG={shlex.quote(config_file)}"],
            primary_output_directory="cdk.out",
            # jsii runs the app in Node and Python at once: the small (3 GB) instance is too tight.
            build_environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGE, compute_type=codebuild.ComputeType.MEDIUM
            ),
            # pip's and npm's downloads, kept between runs under a key of the lock files: a push that changes no
            # pin installs from the cache.
            cache=codebuild.Cache.bucket(self._build_cache(config), prefix="synth"),
            partial_build_spec=codebuild.BuildSpec.from_object(yaml.safe_load((BUILDSPECS / "synth.yml").read_text())),
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            pipeline_name=f"{config.project.name}-platform",
            synth=synth,
            pipeline_type=codepipeline.PipelineType.V2,
            cross_account_keys=True,
            enable_key_rotation=True,
            publish_assets_in_parallel=False,
            # One CloudFormation action per stack (CREATE_UPDATE) instead of a change set's Prepare and Deploy: four
            # sequential actions fewer per environment. Nothing reads the change sets (the release review diffs the
            # templates before the approval), and a failed deploy can be retried (README: "How long a release takes").
            use_change_sets=False,
            self_mutation=True,
            docker_enabled_for_synth=False,
            cli_version=cli_version,
            # Asset publishing runs with publishing rights in every account: never an unpinned `@latest` tool.
            cdk_assets_cli_version=cdk_assets_version,
        )

        for field, value in config.pipeline.example_values():
            Annotations.of(self).add_warning_v2(
                EXAMPLE_VALUE, f"{field} = {value!r} is an example value: set the real one before deploying the pipeline"
            )
        self._project = config.project.name
        self.notifications = self._notifications_topic(config)
        stage_args = {"pipeline_account": config.pipeline.account}
        # One Stage per environment, in promotion order. Each: its compliance report (a finding stops the pipeline
        # before anything deploys) and its release review (what the release changes there; a change that would
        # destroy data stops it), the approval where the environment asks for one (after both, so that the reviewer
        # can open them), the four stacks, then the smoke tests (a failure stops the promotion).
        self.stages: list[PlatformStage] = []
        previous = None
        for environment in config.environments:
            stage = PlatformStage(self, environment.stage_id, config=environment, **stage_args)
            compliance = self._compliance_step(stage, source, synth)
            review = self._review_step(stage, source, synth)
            pre: list[pipelines.Step] = [compliance, review]
            if environment.requires_approval:
                approval = self._approval_step(environment, previous)
                approval.add_step_dependency(compliance)
                approval.add_step_dependency(review)
                pre.append(approval)
            self.pipeline.add_stage(stage, pre=pre, post=[self._smoke_step(stage, source)])
            self.stages.append(stage)
            previous = environment

        self.pipeline.build_pipeline()
        self._pipeline_guard(config)
        self._publishing_starts_no_builds()
        self._notifications_from_this_account_only()
        self._roll_back_production_on_failure(config)
        self._release_gates(config)
        self._support_stacks(config)
        self._pipeline_logging_and_acknowledgments(config)
        self.pipeline.pipeline.notify_on(
            "NotifyOnFailure",
            self.notifications,
            events=[codepipeline.PipelineNotificationEvents.PIPELINE_EXECUTION_FAILED],
            notification_rule_name=f"{config.project.name}-platform-failed",
        )

    def _approval_step(self, environment: EnvironmentConfig, previous: EnvironmentConfig | None) -> pipelines.ManualApprovalStep:
        """A person approves `environment`'s deployment, told by e-mail (the notifications topic), with a link to
        the environment's compliance report."""
        before = f"{previous.stage_id} ({previous.account}) is deployed and smoke-tested. " if previous else ""
        return pipelines.ManualApprovalStep(
            f"PromoteTo{environment.stage_id}",
            comment=(
                f"{before}Review what this release changes in {environment.name} (the link, and the e-mail with its "
                f"summary) and its compliance report, then approve to deploy the same commit to {environment.name} "
                f"({environment.account})."
            ),
            notification_topic=self.notifications,
            review_url=self._report_url(self._review_project_name(environment.stage_id), "changes"),
        )

    def _pipeline_guard(self, config: AppConfig) -> None:
        """Between Synth and UpdatePipeline: a Lambda action compares the pipeline template this release synthesized
        with the deployed pipeline stack and fails when the release widens what the pipeline may do (a statement,
        trust or managed policy added, a new role or step, an approval or gate removed, the guard itself changed),
        unless a person allowed exactly that widening (an SSM parameter under /<project>-pipeline/allowed-widening/
        named by its fingerprint, holding their reason; no role of the pipeline can write it). Self-mutation deploys
        the pipeline before any approval: without the guard, a commit could remove the approval itself. The guard's
        code is the deployed release's, never the commit's."""
        key = logs_key(self, "PipelineLogsKey", alias=f"alias/{config.project.name}-pipeline-logs",
                       description=f"{config.project.name}: encrypts the pipeline's own log groups")
        function = python_function(
            self, "PipelineGuard", code=python_code("pipeline_guard"), handler="index.handler",
            timeout=Duration.minutes(5),
            description=f"{config.project.name}: stops a release that widens what the pipeline may do (before UpdatePipeline)",
            logs_key=key, log_group_id="PipelineGuardLogs", invoked_by="the pipeline's PipelineGuard action",
            why_outside_vpc="It reads the synth artifact from S3 and the pipeline stack's template; no VPC resource.",
            environment={"STACK_NAME": self.stack_name, "TEMPLATE_FILE": self.template_file,
                         "PIPELINE_NAME": f"{config.project.name}-platform",  # the name, not a Ref: no cycle
                         "ALLOWANCE_PATH": f"/{config.project.name}-pipeline/allowed-widening/"},
        )
        supports = sorted(self.pipeline.pipeline.cross_region_support.items())
        function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadThePipelineStack", actions=["cloudformation:GetTemplate"],
            resources=[self.format_arn(service="cloudformation", resource="stack", resource_name=f"{self.stack_name}/*")]
            + [self.format_arn(service="cloudformation", region=region, resource="stack",
                               resource_name=f"{support.stack.stack_name}/*") for region, support in supports],
        ))
        # The cross-region support stacks the pipeline deploys along with it: the guard compares them too.
        function.add_environment("SUPPORT_STACKS", ",".join(f"{support.stack.stack_name}@{region}" for region, support in supports))
        # A person's allowance for one widening: read-only here; no role of the pipeline may write under this path.
        function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadAllowances", actions=["ssm:GetParameter"],
            resources=[self.format_arn(service="ssm", resource="parameter",
                                       resource_name=f"{config.project.name}-pipeline/allowed-widening/*")],
        ))
        function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadItsJob", actions=["codepipeline:GetJobDetails"], resources=["*"]))
        guard_ids = [self.get_logical_id(function.node.default_child), self.get_logical_id(function.role.node.default_child)]
        policy = function.role.node.try_find_child("DefaultPolicy")
        if policy is not None:
            guard_ids.append(self.get_logical_id(policy.node.default_child))
        function.add_environment("GUARD_LOGICAL_IDS", ",".join(guard_ids))
        build = next(stage for stage in self.pipeline.pipeline.stages if stage.stage_name == "Build")
        (synth_output,) = build.actions[0].action_properties.outputs
        build.add_action(codepipeline_actions.LambdaInvokeAction(
            action_name="PipelineGuard", lambda_=function, inputs=[synth_output], run_order=2))
        self.guard = function
        acknowledge(function, {"IAMNoInlinePolicy": "The guard's role has one policy of its own (its stack's template, "
                               "the job results), owned by that role alone and gone with it."})
        if policy is not None:
            cfn = policy.node.default_child
            document = self.resolve(cfn.policy_document)
            acknowledge(cfn, {f"AwsSolutions-IAM5[{finding}]": _pipeline_wildcard_reason(finding, document)
                              for finding in wildcard_findings(document)})

    def _publishing_starts_no_builds(self) -> None:
        """CDK Pipelines gives its asset publishing role (the service role of every Assets build) CodeBuild's build
        control on every project of the account. With it, a publishing build could start any project with a
        buildspec of its own, self-mutation's included, whose role deploys to every environment. The pipeline starts
        each build with its action role, scoped to this pipeline's projects: the publishing role's grant is dropped."""
        assets = self.pipeline.node.try_find_child("Assets")
        for role in assets.node.children if assets else []:
            policy = role.node.try_find_child("DefaultPolicy")
            if isinstance(role, iam.Role) and isinstance(policy, iam.Policy):
                cfn: iam.CfnPolicy = policy.node.default_child  # type: ignore[assignment]
                cfn.policy_document = Lazy.uncached_any(_EditedStatements(cfn.policy_document, _without_build_control))

    def _support_stacks(self, config: AppConfig) -> None:
        """An environment in another region than the pipeline's gets a CDK cross-region support stack there
        (`<pipeline stack>-support-<region>`, in the pipeline account: that region's artifact bucket and its KMS key,
        deployed with the pipeline region's bootstrap roles). Its bucket logs to an access-log bucket of that
        region, like the main artifact bucket. CDK grants the pipeline's roles the support key on `*` (a key of
        another region has no ARN this stack can reference): scoped here to what the grant means, keys of the
        pipeline account in the support regions that carry the support stack's alias (`kms:ResourceAliases`; the
        alias name is fixed at synth). The key's own policy (in the support stack) names the same roles."""
        supports = self.pipeline.pipeline.cross_region_support
        if not supports:
            return
        for region, support in sorted(supports.items()):
            logs = log_bucket(support.stack, "AccessLogsBucket", s3_access_prefix="artifacts/",
                              bucket_name=f"{config.project.name}-pipeline-access-logs-{support.stack.account}-{region}")
            bucket: s3.CfnBucket = support.replication_bucket.node.default_child  # type: ignore[assignment]
            bucket.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
                destination_bucket_name=logs.bucket_name, log_file_prefix="artifacts/")
            acknowledge(support.replication_bucket, {
                "S3BucketVersioningEnabled": "Pipeline artifacts (this region's copy) are rebuilt by every run from the "
                "Git commit; old versions of them are never restored.",
                "S3BucketReplicationEnabled": "Pipeline artifacts (this region's copy) are rebuilt by every run from the "
                "Git commit; the repository is the durable copy.",
            })
        # One statement per region: a key of that region carrying that region's support alias.
        scopes = [(self.format_arn(service="kms", region=region, account=support.stack.account, resource="key",
                                   resource_name="*"),
                   support.replication_bucket.encryption_key.alias_name)  # type: ignore[union-attr]
                  for region, support in sorted(supports.items())]

        def by_alias(statement: dict) -> dict | list[dict]:
            actions = _listed(statement.get("Action", []))
            resources = _listed(statement.get("Resource", []))
            if (statement.get("Effect") != "Allow" or "*" not in resources or "Condition" in statement
                    or not all(str(action).startswith("kms:") for action in actions)):
                return statement
            rest = [resource for resource in resources if resource != "*"]
            scoped = [{"Action": statement["Action"], "Effect": "Allow", "Resource": key,
                       "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias}}} for key, alias in scopes]
            return ([{**statement, "Resource": rest if len(rest) > 1 else rest[0]}] if rest else []) + scoped

        for policy in self.pipeline.node.find_all():
            if isinstance(policy, iam.CfnPolicy):
                policy.policy_document = Lazy.uncached_any(_EditedStatements(policy.policy_document, by_alias))

    def _notifications_from_this_account_only(self) -> None:
        """CDK lets CodeStar Notifications publish to the topic for any account's notification rule; AWS documents
        `aws:SourceAccount` for it: only this account's rules (the pipeline's failures) publish."""
        policy = self.notifications.node.try_find_child("Policy")
        cfn: sns.CfnTopicPolicy = policy.node.default_child  # type: ignore[union-attr, assignment]

        def from_this_account(statement: dict) -> dict:
            if statement.get("Principal") != {"Service": CODESTAR_NOTIFICATIONS} or statement.get("Effect") != "Allow":
                return statement
            return {**statement, "Condition": {"StringEquals": {"aws:SourceAccount": self.account}}}

        cfn.policy_document = Lazy.uncached_any(_EditedStatements(cfn.policy_document, from_this_account))

    def _roll_back_production_on_failure(self, config: AppConfig) -> None:
        """CodePipeline V2 stage rollback: when an action of production's stage fails (a deploy, the smoke tests),
        the stage is run again with the last successful execution's artifacts: the stacks go back to the previous
        release's templates and assets. Data changes (database migrations, secrets put by hand) stay."""
        names = [stage.stage_name for stage in self.pipeline.pipeline.stages]
        cfn: codepipeline.CfnPipeline = self.pipeline.pipeline.node.default_child  # type: ignore[assignment]
        for environment in config.environments:
            if environment.is_production:
                cfn.add_property_override(f"Stages.{names.index(environment.stage_id)}.OnFailure", {"Result": "ROLLBACK"})

    def _release_gates(self, config: AppConfig) -> None:
        """Per environment ([environments.release]): its stage is entered only inside the deployment window
        (CodePipeline V2 `BeforeEntry` condition, DeploymentWindow rule, result FAIL: the release stops there), and
        its approval waits `approval_timeout_minutes`. (The bake is the smoke step's: `_smoke_step`.)"""
        cfn: codepipeline.CfnPipeline = self.pipeline.pipeline.node.default_child  # type: ignore[assignment]
        stages = list(self.pipeline.pipeline.stages)
        names = [stage.stage_name for stage in stages]
        for environment in config.environments:
            index = names.index(environment.stage_id)
            gates = environment.release
            if gates.deployment_window:
                cfn.add_property_override(f"Stages.{index}.BeforeEntry", {"Conditions": [{
                    "Result": "FAIL",
                    "Rules": [{
                        "Name": "DeploymentWindow",
                        "RuleTypeId": {"Category": "Rule", "Owner": "AWS", "Provider": "DeploymentWindow", "Version": "1"},
                        "Configuration": {"Cron": gates.deployment_window, "TimeZone": gates.time_zone},
                    }],
                }]})
            if gates.approval_timeout_minutes:
                actions = [action.action_properties.action_name for action in stages[index].actions]
                position = actions.index(f"PromoteTo{environment.stage_id}")
                cfn.add_property_override(f"Stages.{index}.Actions.{position}.TimeoutInMinutes",
                                          gates.approval_timeout_minutes)

    def _pipeline_logging_and_acknowledgments(self, config: AppConfig) -> None:
        """The artifact bucket logs to a bucket of its own; the CDK Pipelines internals are acknowledged here, in one
        place, by what each wildcard or default is for (it fails synth on a wildcard it cannot explain)."""
        logs_bucket = self._logs_bucket
        artifacts: s3.CfnBucket = self.pipeline.pipeline.artifact_bucket.node.default_child  # type: ignore[assignment]
        artifacts.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
            destination_bucket_name=logs_bucket.bucket_name, log_file_prefix="artifacts/"
        )
        acknowledge(
            self.pipeline.pipeline.artifact_bucket,
            {
                "S3BucketVersioningEnabled": "Pipeline artifacts are rebuilt by every run from the Git commit; old "
                "versions of them are never restored.",
                "S3BucketReplicationEnabled": "Pipeline artifacts are rebuilt by every run from the Git commit; the "
                "repository is the durable copy.",
            },
        )
        acknowledge(
            self.pipeline,
            {
                "IAMNoInlinePolicy": "CDK Pipelines attaches each role's grants as a policy owned by that one role; "
                "none is shared, each goes away with its role.",
                "CodeBuildProjectSourceRepoUrl": "The CodeBuild projects take their source from CodePipeline artifacts; "
                "the Git credentials stay in the CodeConnections connection, no project holds a repository URL or token.",
            },
        )
        for policy in self.pipeline.node.find_all():
            if isinstance(policy, iam.CfnPolicy):
                document = self.resolve(policy.policy_document)
                acknowledge(
                    policy,
                    {f"AwsSolutions-IAM5[{finding}]": _pipeline_wildcard_reason(finding, document)
                     for finding in wildcard_findings(document)},
                )

    def _build_cache(self, config: AppConfig) -> s3.IBucket:
        """pip and npm downloads of the Synth step: public packages only, kept 30 days, rebuilt on any miss."""
        made = SecureBucket(
            self,
            "BuildCache",
            bucket_name=f"{config.project.name}-pipeline-build-cache-{self.account}-{self.region}",
            versioned=False,
            expiration=Duration.days(30),
            access_logs=(self._logs_bucket.bucket_name, "artifacts/"),
        )
        cache_only = ("It holds only the pip and npm download caches of the Synth step: public packages from PyPI "
                      "and npm at the versions the lock files pin (npm checks each against package-lock.json's "
                      "integrity hash); no project data. Only the Synth step's role may write it.")
        acknowledge(made, {
            "S3DefaultEncryptionKMS": cache_only + " Encrypted with S3-managed keys.",
            "S3BucketVersioningEnabled": cache_only + " A miss rebuilds it from the registries.",
            "S3BucketReplicationEnabled": cache_only + " A miss rebuilds it from the registries.",
        })
        return made.bucket

    def _notifications_topic(self, config: AppConfig) -> sns.Topic:
        """Approval requests and pipeline failures. Encrypted with its own key; HTTPS publishing only."""
        key = kms.Key(
            self,
            "NotificationsKey",
            alias=f"alias/{config.project.name}-pipeline-notifications",
            description=f"{config.project.name}: encrypts the pipeline notifications topic",
            enable_key_rotation=True,
        )
        # CodeStar Notifications (pipeline failures) publishes to the encrypted topic.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                principals=[iam.ServicePrincipal(CODESTAR_NOTIFICATIONS)],
                resources=["*"],
                conditions={"StringEquals": {"kms:ViaService": f"sns.{self.region}.amazonaws.com"}},
            )
        )
        self._notifications_key = key
        topic = sns.Topic(
            self,
            "Notifications",
            topic_name=f"{config.project.name}-pipeline-notifications",
            display_name=f"{config.project.name} delivery pipeline",
            master_key=key,
            enforce_ssl=True,
        )
        if config.pipeline.notification_email:
            topic.add_subscription(subscriptions.EmailSubscription(config.pipeline.notification_email))
        return topic

    def _compliance_project_name(self, stage_name: str) -> str:
        return f"{self._project}-compliance-{stage_name.lower()}"

    def _review_project_name(self, stage_name: str) -> str:
        return f"{self._project}-review-{stage_name.lower()}"

    def _report_url(self, project_name: str, report: str = "compliance") -> str:
        """The CodeBuild report group of a step (CodeBuild names it `<project>-<report>`)."""
        return (
            f"https://{self.region}.console.aws.amazon.com/codesuite/codebuild/{self.account}/testReports/"
            f"reportGroups/{project_name}-{report}?region={self.region}"
        )

    def _review_step(
        self, stage: PlatformStage, source: pipelines.IFileSetProducer, synth: pipelines.IFileSetProducer
    ) -> pipelines.CodeBuildStep:
        """Before the Stage deploys: what the release changes against the templates deployed in that environment,
        and where what runs has drifted from them (both through the environment's CDK bootstrap lookup role). A change
        that would destroy data, or drift on a stateful resource or on one the release changes, unless the config
        allows it, fails the step. JUnit to CodeBuild Reports, the Markdown report in the build log; the summary
        to the notifications topic, so the approver's e-mail says what the release will do. It writes no artifact: only
        the Synth step writes what later steps and the deploy read."""
        config = stage.config
        name = stage.stage_name
        lookup_role = (f"arn:{self.partition}:iam::{config.account}:role/"
                       f"cdk-{CDK_QUALIFIER}-lookup-role-{config.account}-{config.region}")
        return pipelines.CodeBuildStep(
            f"Review{name}",
            project_name=self._review_project_name(name),
            input=source,
            additional_inputs={"cdk.out": synth},
            # boto3 to read the stacks (what replaces a resource comes from pipeline/create-only.json).
            install_commands=[_hashed_install("boto3")],
            commands=[
                f"python -m pipeline.changes --base deployed --drift --assembly cdk.out --stage {name}"
                + ("" if self._config_file == DEFAULT_CONFIG_FILE else f" --config {shlex.quote(self._config_file)}")
                + " --junit reports/changes.xml --markdown reports/changes.md --json reports/changes.json"
                ' --notify "$NOTIFICATIONS_TOPIC"'
            ],
            env={"NOTIFICATIONS_TOPIC": self.notifications.topic_arn},
            build_environment=codebuild.BuildEnvironment(build_image=BUILD_IMAGE),
            partial_build_spec=codebuild.BuildSpec.from_object(yaml.safe_load((BUILDSPECS / "changes.yml").read_text())),
            role_policy_statements=[
                iam.PolicyStatement(sid="ReadDeployedTemplates", actions=["sts:AssumeRole"], resources=[lookup_role]),
                iam.PolicyStatement(sid="PublishSummary", actions=["sns:Publish"], resources=[self.notifications.topic_arn]),
                iam.PolicyStatement(
                    sid="EncryptSummary",
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=[self._notifications_key.key_arn],
                ),
            ],
        )

    def _compliance_step(
        self, stage: PlatformStage, source: pipelines.IFileSetProducer, synth: pipelines.IFileSetProducer
    ) -> pipelines.CodeBuildStep:
        """Before the Stage deploys: the security-review report of this Stage from the synth output; any open
        finding or reason-less acknowledgment fails the step. JUnit to CodeBuild Reports, the Markdown report in the
        build log; no artifact (only the Synth step writes what later steps and the deploy read)."""
        name = stage.stage_name
        return pipelines.CodeBuildStep(
            f"Compliance{name}",
            project_name=self._compliance_project_name(name),
            input=source,
            additional_inputs={"cdk.out": synth},
            commands=[
                f"python -m pipeline.compliance --assembly cdk.out --stage {name}"
                " --junit reports/compliance.xml --markdown reports/compliance.md --json reports/compliance.json"
            ],
            build_environment=codebuild.BuildEnvironment(build_image=BUILD_IMAGE),
            partial_build_spec=codebuild.BuildSpec.from_object(
                yaml.safe_load((BUILDSPECS / "compliance.yml").read_text())
            ),
        )

    def _smoke_step(self, stage: PlatformStage, source: pipelines.IFileSetProducer) -> pipelines.CodeBuildStep:
        """After the Stage's four stacks: assume the Stage's smoke role, run every HTTP check through the probe
        Lambda inside the Stage's VPC and read the target health of every target group; JUnit to CodeBuild Reports.
        Then the bake ([environments.release] bake_minutes): the environment's alarms are watched that long, and one
        that goes into ALARM fails the step, so the stage (production's rolls back; see _roll_back_production_on_failure).
        The bake runs here rather than as a stage condition: the alarms live in the environment's account, where this
        step already has a role, while a CloudWatchAlarm rule reads alarms of the pipeline's account."""
        smoke = stage.observability.outputs.smoke
        config = stage.config
        bake = config.release.bake_minutes
        return pipelines.CodeBuildStep(
            f"SmokeTests{stage.stage_name}",
            input=source,
            env_from_cfn_outputs={
                "PROBE_FUNCTION": smoke.function_name,
                "PROBE_ROLE_ARN": smoke.role_arn,
                "SMOKE_CHECKS": smoke.checks,
                "SMOKE_TARGET_GROUPS": smoke.target_groups,
            },
            install_commands=[_hashed_install("boto3")],
            commands=[
                "python -m pipeline.smoke"
                ' --role-arn "$PROBE_ROLE_ARN" --function "$PROBE_FUNCTION" --check "$SMOKE_CHECKS"'
                f' --target-group "$SMOKE_TARGET_GROUPS" --region {config.region}'
                f" --deadline {SMOKE_DEADLINE_SECONDS} --junit reports/smoke.xml"
                # The bake: once every check passed, the environment's alarms for `bake` minutes.
                + (f" --bake-minutes {bake} --alarm-prefix {config.qualifier}" if bake else "")
            ],
            # The checks' deadline, the bake, and room for the installs.
            timeout=Duration.minutes(SMOKE_DEADLINE_SECONDS // 60 + bake + 15),
            build_environment=codebuild.BuildEnvironment(build_image=BUILD_IMAGE),
            partial_build_spec=codebuild.BuildSpec.from_object(yaml.safe_load((BUILDSPECS / "smoke.yml").read_text())),
            # Named, so that the environment's smoke-test role trusts exactly this role (smoke_step_role_name).
            role=iam.Role(self.pipeline, f"SmokeTests{stage.stage_name}Role", role_name=smoke_step_role_name(config),
                          assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
                          description=f"The smoke tests of {config.name}: assume its smoke-test role, nothing else"),
            role_policy_statements=[
                iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[smoke_role_arn(config, self.partition)])
            ],
        )


_SUPPORT_KEYS = r"^Resource::arn:[^:]+:kms:[a-z0-9-]+:\d+:key/\*$"  # a support stack's key, by its alias
_PIPELINE_WILDCARDS = (
    (r"^Action::s3:(GetObject|GetBucket|List|DeleteObject|Abort)\*$|^Resource::<PipelineArtifactsBucket[0-9A-F]+\.Arn>/\*$",
     "CDK Pipelines' own grant on its artifact bucket: each action reads and writes the run's artifacts there."),
    (r"^Resource::arn:[^:]+:s3:::[a-z0-9-]+-support-[a-z0-9-]*eplicationbucket[0-9a-f]+/\*$",
     "CDK Pipelines' artifact bucket in an environment's region other than the pipeline's (its cross-region support "
     "stack): each action reads and writes the run's artifacts there, as in the main artifact bucket."),
    (r"^Resource::<BuildCacheBucket[0-9A-F]+\.Arn>/\*$",
     "The Synth step's build cache: CodeBuild reads and writes its cache archives (pip and npm downloads) there."),
    (r"^Action::kms:(GenerateDataKey|ReEncrypt)\*$",
     "CDK Pipelines' own grant on the artifact bucket's KMS key, which encrypts artifacts shared across accounts."),
    (r"^Resource::arn:[^:]+:(logs|codebuild):[^:]+:\d+:(log-group:/aws/codebuild/|report-group/)",
     "CodeBuild's own log groups and report groups, named after each project."),
    (r"^Resource::arn:[^:]+:cloudformation:[^:]+:\d+:stack/[A-Z][A-Za-z0-9]*Pipeline(-support-[a-z0-9-]+)?/\*$",
     "The pipeline guard reads the template of the pipeline's own stack and of its cross-region support stacks "
     "(every stack id of those names)."),
    (r"^Resource::arn:[^:]+:ssm:[^:]+:\d+:parameter/[a-z0-9-]+-pipeline/allowed-widening/\*$",
     "The pipeline guard reads the allowances people put, one parameter per widening, named by its fingerprint."),
    (r"^Resource::<PipelineGuard[0-9A-F]+\.Arn>:\*$",
     "CDK's grant to invoke the pipeline guard: its versions and aliases, of that one function only."),
    (_SUPPORT_KEYS,
     "CDK Pipelines' KMS key of a cross-region support stack (artifacts of an environment in another region), "
     "allowed only for keys carrying that stack's alias (condition kms:ResourceAliases): its key id is generated in "
     "that region and cannot be referenced from here."),
    (r"^Resource::arn:\*:iam::\d+:role/\*$",
     "Self-mutation assumes the CDK bootstrap roles (cdk-<qualifier>-*) of the pipeline's accounts; bootstrap "
     "fixes their names and their trust."),
)

# The only actions the pipeline's own roles may have on every resource ("Resource::*"), each with why. Any other one
# fails synth: a grant on every resource is acknowledged by its actions, never by the finding alone.
_UNSCOPED_ACTIONS = {
    "cloudformation:DescribeStacks": "CDK Pipelines' grant to self-mutation: the CDK CLI reads the status and "
    "outputs of the stacks it deploys, the bootstrap stack's included. It describes, it changes nothing.",
    "s3:ListBucket": "CDK Pipelines' grant to self-mutation, for the CDK CLI's checks of the bootstrap buckets "
    "(without it S3 answers a missing object with 403, not 404). It lists object keys and reads no object.",
    "lambda:ListFunctions": "CDK's grant to the pipeline guard's action role (CodePipeline lists functions before it "
    "invokes one); it lists names and settings, never code or secrets. The invocation is scoped to the guard.",
    "codepipeline:GetJobDetails": "The pipeline guard reads the job CodePipeline gave it (its artifact, its pipeline "
    "and action, checked); jobs have no resource-level permissions.",
    "codepipeline:PutJobSuccessResult": "The pipeline guard reports its decision on the job CodePipeline gave it; job "
    "results have no resource-level permissions.",
    "codepipeline:PutJobFailureResult": "The pipeline guard reports its decision on the job CodePipeline gave it; job "
    "results have no resource-level permissions.",
}

# CodeBuild's build control: for the pipeline's action role only, on its own projects (_publishing_starts_no_builds).
_BUILD_CONTROL = frozenset({"codebuild:BatchGetBuilds", "codebuild:StartBuild", "codebuild:StopBuild"})


def _hashed_install(lock: str) -> str:
    """A step's tools from PyPI, only files whose hash its lock lists (pipeline/locks.py): a file added to a release
    after the lock was written, or swapped on the way, is refused."""
    return (f"python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps "
            f"-r buildspecs/locks/{lock}.txt")


def _listed(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _without_build_control(statement: dict) -> dict | None:
    """The statement less CodeBuild's build control (None when nothing is left of it)."""
    if statement.get("Effect") != "Allow":
        return statement
    actions = [action for action in _listed(statement.get("Action", [])) if action not in _BUILD_CONTROL]
    return {**statement, "Action": actions if len(actions) > 1 else actions[0]} if actions else None


@jsii.implements(IAnyProducer)
class _EditedStatements:
    """A policy document as it resolves at synth, each statement passed through `edit` (None drops it, a list
    replaces it by those statements)."""

    def __init__(self, document: object, edit: Callable[[dict], dict | list[dict] | None]) -> None:
        self._document = document
        self._edit = edit

    def produce(self, context: IResolveContext) -> object:
        resolved = context.resolve(self._document)
        statements: list[dict] = []
        for statement in resolved["Statement"]:
            edited = self._edit(statement)
            statements += [] if edited is None else edited if isinstance(edited, list) else [edited]
        return {**resolved, "Statement": statements}


def _promotion(config: AppConfig) -> str:
    """`staging -> approval -> production`: the environments in order, an approval before those that ask for one."""
    return " -> ".join(f"approval -> {e.name}" if e.requires_approval else e.name for e in config.environments)


def _pipeline_wildcard_reason(finding: str, document: dict) -> str:
    """Why a wildcard of the pipeline's own policy `document` (resolved) is safe; ValueError when nothing says."""
    if finding == "Resource::*":
        unscoped = [statement for statement in document.get("Statement", [])
                    if statement.get("Effect") == "Allow" and "*" in _listed(statement.get("Resource", []))]
        actions = sorted({action for statement in unscoped for action in _listed(statement.get("Action", []))})
        unexplained = [action for action in actions if action not in _UNSCOPED_ACTIONS] + [
            f"every action but {statement['NotAction']}" for statement in unscoped if "NotAction" in statement]
        if unexplained:
            raise ValueError(f"the pipeline's own policies grant {', '.join(unexplained)} on every resource; "
                             "scope it, or add why it is safe to _UNSCOPED_ACTIONS")
        return " ".join(_UNSCOPED_ACTIONS[action] for action in actions)
    if re.search(_SUPPORT_KEYS, finding):  # only as _support_stacks scopes it: each statement bound to an alias
        key = finding.removeprefix("Resource::")
        for statement in document.get("Statement", []):
            if key in _listed(statement.get("Resource", [])) and not statement.get("Condition", {}).get(
                    "ForAnyValue:StringEquals", {}).get("kms:ResourceAliases"):
                raise ValueError(f"the pipeline's own policies grant KMS on {key} without the support alias condition")
    for pattern, reason in _PIPELINE_WILDCARDS:
        if re.search(pattern, finding):
            return reason
    raise ValueError(f"unexplained wildcard in the pipeline's own policies: {finding}; review it and add a reason")
