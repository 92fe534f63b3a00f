"""The delivery pipeline: source -> synth -> self-mutation -> staging -> approval -> production."""

from __future__ import annotations

from aws_cdk import Environment, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from constructs import Construct

from config.model import AppConfig
from stages.platform_stage import PlatformStage

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

        self.staging = PlatformStage(self, "Staging", config=config.staging)
        self.pipeline.add_stage(self.staging)

        self.production = PlatformStage(self, "Production", config=config.production)
        self.pipeline.add_stage(
            self.production,
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
