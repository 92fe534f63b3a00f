"""The delivery pipeline: source -> synth -> self-mutation -> staging -> approval -> production."""

from __future__ import annotations

from pathlib import Path

import yaml
from aws_cdk import Environment, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import AppConfig
from constructs_lib.smoke_probe import smoke_role_arn
from stages.platform_stage import PlatformStage

BUILDSPECS = Path(__file__).resolve().parents[1] / "buildspecs"
SMOKE_DEADLINE_SECONDS = 240

# CodeBuild image with Node.js 22 and Python 3.12 runtimes.
BUILD_IMAGE = codebuild.LinuxBuildImage.STANDARD_7_0
SYNTH_COMMAND = "make synth"


class PipelineStack(Stack):
    """A self-mutating CDK pipeline in the pipeline (tools) account.

    Non-obvious defaults:
    - Pipeline type V2; cross-account KMS keys (rotated) so Stages in other accounts can read artifacts.
    - The synth step runs the README's `make synth` (same set-up and the same compliance packs as a laptop).
    - The CDK CLI used by self-mutation and asset publishing is the one pinned in package.json.
    - Production deploys only after a person approves the ManualApprovalStep.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, cli_version: str, **kwargs) -> None:
        super().__init__(
            scope,
            construct_id,
            env=Environment(account=config.pipeline.account, region=config.pipeline.region),
            description=f"{config.project}: delivery pipeline (staging -> approval -> production)",
            **kwargs,
        )
        source = pipelines.CodePipelineSource.connection(
            config.pipeline.repository,
            config.pipeline.branch,
            connection_arn=config.pipeline.connection_arn,
            trigger_on_push=True,
        )
        synth = pipelines.CodeBuildStep(
            "Synth",
            input=source,
            commands=[SYNTH_COMMAND],
            primary_output_directory="cdk.out",
            # jsii runs the app in Node and Python at once: the small (3 GB) instance is too tight.
            build_environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGE, compute_type=codebuild.ComputeType.MEDIUM
            ),
            partial_build_spec=codebuild.BuildSpec.from_object(
                {"phases": {"install": {"runtime-versions": {"nodejs": "22", "python": "3.12"}}}}
            ),
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            pipeline_name=f"{config.project}-platform",
            synth=synth,
            pipeline_type=codepipeline.PipelineType.V2,
            cross_account_keys=True,
            enable_key_rotation=True,
            publish_assets_in_parallel=False,
            self_mutation=True,
            docker_enabled_for_synth=False,
            cli_version=cli_version,
        )

        stage_args = {"pipeline_account": config.pipeline.account, "pipeline_stack_name": self.stack_name}
        self.staging = PlatformStage(self, "Staging", config=config.staging, **stage_args)
        # A failing smoke test stops the pipeline here, before the production approval.
        self.pipeline.add_stage(self.staging, post=[self._smoke_step(self.staging, source)])

        self.production = PlatformStage(self, "Production", config=config.production, **stage_args)
        self.pipeline.add_stage(
            self.production,
            post=[self._smoke_step(self.production, source)],
            pre=[
                pipelines.ManualApprovalStep(
                    "PromoteToProduction",
                    comment=(
                        f"Staging ({config.staging.account}) is deployed. Approve to deploy the same commit to "
                        f"production ({config.production.account})."
                    ),
                )
            ],
        )

    def _smoke_step(self, stage: PlatformStage, source: pipelines.IFileSetProducer) -> pipelines.CodeBuildStep:
        """After the Stage's four stacks: assume the Stage's smoke role, run every HTTP check through the probe
        Lambda inside the Stage's VPC and read the target health of every target group; JUnit to CodeBuild Reports."""
        smoke = stage.observability.outputs.smoke
        config = stage.config
        return pipelines.CodeBuildStep(
            f"SmokeTests{stage.stage_name}",
            input=source,
            env_from_cfn_outputs={
                "PROBE_FUNCTION": smoke.function_name,
                "PROBE_ROLE_ARN": smoke.role_arn,
                "SMOKE_CHECKS": smoke.checks,
                "SMOKE_TARGET_GROUPS": smoke.target_groups,
            },
            install_commands=["python -m pip install --quiet --disable-pip-version-check -c constraints.txt boto3"],
            commands=[
                "python -m pipeline.smoke"
                ' --role-arn "$PROBE_ROLE_ARN" --function "$PROBE_FUNCTION" --check "$SMOKE_CHECKS"'
                f' --target-group "$SMOKE_TARGET_GROUPS" --region {config.region}'
                f" --deadline {SMOKE_DEADLINE_SECONDS} --junit reports/smoke.xml"
            ],
            build_environment=codebuild.BuildEnvironment(build_image=BUILD_IMAGE),
            partial_build_spec=codebuild.BuildSpec.from_object(yaml.safe_load((BUILDSPECS / "smoke.yml").read_text())),
            role_policy_statements=[
                iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[smoke_role_arn(config, self.partition)])
            ],
        )
