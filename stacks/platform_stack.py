"""PlatformStack: ECS cluster, internal HTTPS ALB, ACM certificate, IAM roles, SSM bridge for Terraform, and the
Coder, LiteLLM and Key Provisioner services."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import Bucket, EnvironmentConfig
from constructs_lib.bucket_access import READ_WRITE, grant_objects
from constructs_lib.coder_service import CoderService, CoderWorkspaceAccess
from constructs_lib.ecs_exec import EcsExec
from constructs_lib.fargate_service import FargateService, ServiceRuntime, ecr_repository_arn, task_role
from constructs_lib.internal_load_balancer import InternalLoadBalancer
from constructs_lib.key_provisioner_service import KeyProvisionerService
from constructs_lib.litellm_service import LiteLLMService
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import SERVICES
from constructs_lib.terraform_bridge import TerraformBridge
from constructs_lib.workspace_roles import WorkspaceRoles
from stacks.data_stack import DataStackOutputs
from stacks.network_stack import NetworkStackOutputs


@dataclass(frozen=True)
class PlatformStackOutputs:
    cluster: ecs.ICluster  # the platform services'
    workspace_cluster: ecs.ICluster  # Coder's workspaces'
    load_balancer: elbv2.IApplicationLoadBalancer
    listener: elbv2.IApplicationListener
    certificate: acm.ICertificate
    workspace_task_role: iam.IRole
    aem_workspace_task_role: iam.IRole
    workspace_execution_role: iam.IRole
    langfuse_task_role: iam.IRole
    runtime: ServiceRuntime  # for the Observability layer's services
    target_groups: dict[str, elbv2.IApplicationTargetGroup]  # coder, litellm, key-provisioner
    services: tuple[FargateService, ...]  # for the Observability layer's dashboard


class PlatformStack(Stack):
    """Shared runtime of the platform services.

    Non-obvious defaults:
    - The ALB is internal (private app subnets), HTTPS only with a TLS 1.2+ policy, drops invalid header fields,
      answers 404 to any host no rule claims, keeps idle connections 660 s (longer than LiteLLM's request timeout),
      and logs to the Network layer's bucket.
    - Each service has an execution role of its own that reads exactly the secrets its containers receive (and
      decrypts them only through Secrets Manager). Workspaces get an execution role without any secret access:
      Coder's templates register workspace task definitions, and must not be able to inject platform secrets.
    - ECS Exec only where the config allows it (off in production by default), every session logged.
    - SSM parameters under `/{project}-{env}/` carry the ids that Coder's Terraform workspace templates need.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStackOutputs,
        data: DataStackOutputs,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self._config = config

        # ECS Exec only where the environment allows it (config features.enable_ecs_exec); sessions are logged.
        ecs_exec = EcsExec(self, "EcsExec", qualifier=config.qualifier, key=network.logs_key) if config.ecs_exec else None
        def ecs_cluster(construct_id: str, name: str, exec_configuration=None) -> ecs.Cluster:
            return ecs.Cluster(
                self,
                construct_id,
                cluster_name=name,
                vpc=network.vpc,
                container_insights_v2=ecs.ContainerInsights.ENABLED,
                enable_fargate_capacity_providers=True,
                execute_command_configuration=exec_configuration,
            )

        cluster = ecs_cluster("Cluster", config.qualifier, ecs_exec.configuration if ecs_exec else None)
        if ecs_exec:
            cluster.node.add_dependency(ecs_exec.log_group)
        # Workspaces run in a cluster of their own: Coder may change services and tasks there, and none of the
        # platform's run there.
        workspace_cluster = ecs_cluster("WorkspaceCluster", config.workspace_cluster_name)

        balancer = InternalLoadBalancer(
            self,
            "LoadBalancing",
            environment=config.name,
            domain=config.domain,
            hosted_zone_id=config.hosted_zone_id,
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.security_groups.alb,
            access_logs=network.access_logs_bucket,
            deletion_protection=config.is_production,
            direct_access=config.features.enable_workspace_direct_access,
        )
        load_balancer, listener, certificate = balancer.load_balancer, balancer.listener, balancer.certificate
        # Where `<domain>` and `*.<domain>` must point (README "DNS and certificates"): people read it here.
        CfnOutput(self, "LoadBalancerDnsName", value=load_balancer.load_balancer_dns_name,
                  description=f"Point {config.domain} and *.{config.domain} here (alias or CNAME, a zone the VPC's "
                  "users resolve: the load balancer is internal)")

        workspaces = WorkspaceRoles(
            self,
            "Workspaces",
            qualifier=config.qualifier,
            artifacts_bucket=config.bucket_name(Bucket.ARTIFACTS),
            data_key=data.data_key,
            file_system=data.file_system,
            platform_repositories=tuple(
                arn for image in config.images.model_dump().values() if (arn := ecr_repository_arn(image, self.partition))
            ),
        )
        secrets = SecretAccess.import_into(self, data.secrets, data.data_key)
        runtime = ServiceRuntime(
            cluster=cluster,
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.security_groups.ecs_services,
            namespace=network.namespace,
            family_prefix=config.qualifier,
            logs_key=network.logs_key,
            secrets_key=data.data_key,
            ecs_exec_log_group=ecs_exec.log_group_name if ecs_exec else None,
            alarms=network.alarms,
        )
        coder = CoderService(
            self,
            "Coder",
            config=config,
            runtime=runtime,
            listener=listener,
            secrets=secrets,
            workspaces=CoderWorkspaceAccess(
                cluster_arn=workspace_cluster.cluster_arn,
                cluster_name=config.workspace_cluster_name,  # the names, so that policies read as what they allow
                platform_cluster_name=config.qualifier,
                platform_task_families=tuple(f"{runtime.family_prefix}-{service.name}" for service in SERVICES),
                passable_roles=workspaces.passable,
                file_system=data.file_system,
                terraform_state_bucket=config.bucket_name(Bucket.TERRAFORM_STATE),
                lock_table_name=config.lock_table_name,
                data_key=data.data_key,
                direct_access_listener=balancer.direct_access_listener,
            ),
            config_file_system=data.platform_file_system,
        )
        litellm = LiteLLMService(
            self, "LiteLLM", config=config, runtime=runtime, listener=listener, secrets=secrets,
            redis_host=data.redis.endpoint, redis_port=data.redis.port,
        )
        key_provisioner = KeyProvisionerService(
            self, "KeyProvisioner", config=config, runtime=runtime, listener=listener, secrets=secrets
        )
        # The services reach their secrets' `url` fields only after the Data layer's AppDatabases has run.
        self.services = {"coder": coder, "litellm": litellm, "key-provisioner": key_provisioner}

        self.outputs = PlatformStackOutputs(
            cluster=cluster,
            workspace_cluster=workspace_cluster,
            load_balancer=load_balancer,
            listener=listener,
            certificate=certificate,
            workspace_task_role=workspaces.task_role,
            aem_workspace_task_role=workspaces.aem_task_role,
            workspace_execution_role=workspaces.execution_role,
            langfuse_task_role=self._langfuse_task_role(data, ecs_exec.policy if ecs_exec else None),
            runtime=runtime,
            target_groups={name: svc.service.target_group for name, svc in self.services.items()},
            services=tuple(svc.service for svc in self.services.values()),
        )
        self._bridge_parameters(network, data, balancer.direct_access_listener)

    def _langfuse_task_role(self, data: DataStackOutputs, ecs_exec_policy: iam.IManagedPolicy | None) -> iam.Role:
        """Langfuse web and worker (Observability layer): the event and media buckets, nothing else."""
        role = task_role(
            self, "LangfuseTaskRole", f"{self._config.qualifier}: Langfuse web and worker (event and media uploads)"
        )
        # The Observability layer uses this role as it is (immutable there): ECS Exec must be granted here.
        if ecs_exec_policy is not None:
            role.add_managed_policy(ecs_exec_policy)
        grant_objects(
            role,
            [self._config.bucket_name(bucket) for bucket in (Bucket.LANGFUSE_EVENTS, Bucket.LANGFUSE_MEDIA)],
            READ_WRITE,
            data.data_key,
            sid="Langfuse",
            reason="Langfuse writes every ingested event and media file under its own keys in these two buckets, "
            "reads them back and deletes them on retention or deletion requests.",
        )
        return role

    def _bridge_parameters(
        self, network: NetworkStackOutputs, data: DataStackOutputs, direct_access: elbv2.IApplicationListener | None
    ) -> None:
        outputs = self.outputs
        app_subnet_ids = network.vpc.select_subnets(subnet_group_name=network.app_subnets.subnet_group_name).subnet_ids
        TerraformBridge(
            self,
            "TerraformBridge",
            qualifier=self._config.qualifier,
            ssm_prefix=self._config.ssm_prefix,
            values={
                # The cluster workspaces run in (not the platform's).
                "ClusterArn": ("cluster-arn", outputs.workspace_cluster.cluster_arn),
                "ClusterName": ("cluster-name", outputs.workspace_cluster.cluster_name),
                # Workspaces run with the workspace execution role: it reads no secrets.
                "TaskExecutionRoleArn": ("task-execution-role-arn", outputs.workspace_execution_role.role_arn),
                "WorkspaceTaskRoleArn": ("workspace-task-role-arn", outputs.workspace_task_role.role_arn),
                "WorkspaceSecurityGroupId": ("workspace-sg-id", network.security_groups.ecs_workspaces.security_group_id),
                "PrivateSubnetIds": ("private-subnet-ids", ",".join(app_subnet_ids)),
                "EfsId": ("efs-id", data.file_system.file_system_id),
                # Workspace direct access: the listener Coder may add rules to (never the platform's).
                **({"AlbListenerArn": ("alb-listener-arn", direct_access.listener_arn)} if direct_access else {}),
            },
        )
