"""ObservabilityStack: ClickHouse, Langfuse web and Langfuse worker, the Stage's smoke-test probe and the workspace
guard."""

from __future__ import annotations

from dataclasses import dataclass, replace

from aws_cdk import Stack
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import Bucket, EnvironmentConfig
from constructs_lib.clickhouse_service import ClickHouseService
from constructs_lib.langfuse_service import LangfuseServices, langfuse_environment
from constructs_lib.operations import Operations, Watched
from constructs_lib.secret_access import SecretAccess
from constructs_lib.smoke_probe import SmokeOutputs, SmokeProbe
from constructs_lib.workspace_guard import WorkspaceGuard
from stacks.data_stack import DataStackOutputs
from stacks.network_stack import NetworkStackOutputs
from stacks.platform_stack import PlatformStackOutputs


@dataclass(frozen=True)
class ObservabilityStackOutputs:
    langfuse_target_group: elbv2.IApplicationTargetGroup
    smoke: SmokeOutputs  # CfnOutputs for the pipeline's smoke-test step


class ObservabilityStack(Stack):
    """Langfuse (tracing for every LiteLLM call) and its ClickHouse, on the Platform layer's cluster and listener.

    Non-obvious defaults:
    - Langfuse and ClickHouse have their own security groups (Network layer): ClickHouse admits Langfuse only.
    - The Platform layer's Langfuse task role is used as it is (imported, immutable): its policy is complete there,
      and this stack never writes into another stack's IAM. Each service's execution role is its own, here.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStackOutputs,
        data: DataStackOutputs,
        platform: PlatformStackOutputs,
        pipeline_account: str,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        secrets = SecretAccess.import_into(self, data.secrets, data.data_key)
        langfuse_role = iam.Role.from_role_arn(self, "LangfuseTaskRole", platform.langfuse_task_role.role_arn, mutable=False)
        base = platform.runtime

        self.clickhouse = ClickHouseService(
            self,
            "ClickHouse",
            config=config,
            runtime=replace(base, security_group=network.security_groups.clickhouse),
            file_system=data.platform_file_system,
            old_file_system=data.file_system,
            secrets=secrets,
        )
        self.langfuse = LangfuseServices(
            self,
            "Langfuse",
            config=config,
            runtime=replace(base, security_group=network.security_groups.langfuse),
            listener=platform.listener,
            task_role=langfuse_role,
            secrets=secrets,
            environment=langfuse_environment(
                config,
                network.namespace.namespace_name,
                data.redis.endpoint,
                data.redis.port,
                data.buckets[Bucket.LANGFUSE_EVENTS],
                data.buckets[Bucket.LANGFUSE_MEDIA],
            ),
        )
        # Langfuse web migrates ClickHouse when it starts and exits when it cannot: on a first deploy (or when both
        # change) CloudFormation creates or updates web only once ClickHouse's service is stable, its server healthy.
        self.langfuse.web.service.node.add_dependency(self.clickhouse.service.service)
        # The last layer: every target group exists, so the smoke-test probe lives here.
        self.smoke_probe = SmokeProbe(
            self,
            "SmokeProbe",
            config=config,
            pipeline_account=pipeline_account,
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.security_groups.smoke_probe,
            load_balancer=platform.load_balancer,
            target_groups=[*platform.target_groups.values(), self.langfuse.web.target_group],
            logs_key=network.logs_key,
        )
        # ECS lets a workspace service join any target group and security group: the guard takes them out again.
        self.workspace_guard = WorkspaceGuard(
            self,
            "WorkspaceGuard",
            platform_cluster=config.qualifier,
            workspace_cluster=config.workspace_cluster_name,
            platform_target_groups=[*platform.target_groups.values(), self.langfuse.web.target_group],
            workspace_security_group=network.security_groups.ecs_workspaces,
            logs_key=network.logs_key,
            alarms=network.alarms,
        )
        services = [*platform.services, self.clickhouse.service, self.langfuse.web, self.langfuse.worker]
        if self.langfuse.web_replicas is not None:
            services.append(self.langfuse.web_replicas)
        # The last layer sees every other: alarms on the environment's shared tiers and the dashboard live here.
        self.operations = Operations(
            self,
            "Operations",
            alarms=network.alarms,
            watched=Watched(
                load_balancer=platform.load_balancer,
                database=data.database.instance,
                database_max_storage_gb=config.database.max_allocated_storage_gb,
                redis_group_id=data.redis.replication_group.ref,
                file_systems={"platform": data.platform_file_system.file_system_id,
                              "workspaces": data.file_system.file_system_id},
                functions={**data.functions, "smoke probe": self.smoke_probe.function,
                           "workspace guard": self.workspace_guard.function},
                services=services,
            ),
        )
        self.outputs = ObservabilityStackOutputs(
            langfuse_target_group=self.langfuse.web.target_group, smoke=self.smoke_probe.outputs
        )
