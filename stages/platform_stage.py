"""The deployable unit: one environment's four stacks, in dependency order."""

from __future__ import annotations

from aws_cdk import Annotations, Environment, Stage, Tags
from constructs import Construct

from config.markers import EXAMPLE_VALUE
from config.model import EnvironmentConfig
from constructs_lib.compliance import acknowledge
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.observability_stack import ObservabilityStack
from stacks.platform_stack import PlatformStack


class PlatformStage(Stage):
    """Network -> Data -> Platform -> Observability for one environment.

    The Stage is the namespace (its id is the environment's `stage_id`): construct ids inside never name the
    environment, so the environments' templates differ only in their configured values. Stack names come out as
    `<StageId>-Network`, ...
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        pipeline_account: str,
        **kwargs,
    ) -> None:
        super().__init__(
            scope, construct_id, env=Environment(account=config.account, region=config.region), **kwargs
        )
        self.config = config
        self.network = NetworkStack(
            self, "Network", config=config, description=f"{config.qualifier}: VPC, endpoints, security groups"
        )
        self.data = DataStack(
            self,
            "Data",
            config=config,
            network=self.network.outputs,
            description=f"{config.qualifier}: RDS, Redis, EFS, S3, DynamoDB, secrets",
        )
        self.data.add_stack_dependency(self.network)
        self.platform = PlatformStack(
            self,
            "Platform",
            config=config,
            network=self.network.outputs,
            data=self.data.outputs,
            description=f"{config.qualifier}: ECS cluster, internal ALB, IAM roles, SSM bridge",
        )
        self.platform.add_stack_dependency(self.data)
        self.observability = ObservabilityStack(
            self,
            "Observability",
            config=config,
            network=self.network.outputs,
            data=self.data.outputs,
            platform=self.platform.outputs,
            pipeline_account=pipeline_account,
            description=f"{config.qualifier}: Langfuse web and worker, ClickHouse, smoke-test probe",
        )
        self.observability.add_stack_dependency(self.platform)
        acknowledge(
            self,
            {
                "IAMNoInlinePolicy": "Each role's permissions are a policy attached to that role alone (CDK's "
                "DefaultPolicy), written for that role and removed with it; no policy is shared between roles.",
            },
        )
        # Synth works with the shipped example values; a deploy must not: the pipeline's pre-step reads these.
        for field, value in config.example_values():
            Annotations.of(self.network).add_warning_v2(
                EXAMPLE_VALUE, f"{field} = {value!r} is an example value: set the real one before this environment deploys"
            )
        for key, value in config.resource_tags.items():
            Tags.of(self).add(key, value)
