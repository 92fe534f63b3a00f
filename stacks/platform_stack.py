"""PlatformStack: ECS cluster, internal HTTPS ALB, ACM certificate, IAM roles, SSM bridge for Terraform, and the
Coder, LiteLLM and Key Provisioner services."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import Bucket, EnvironmentConfig
from constructs_lib.bucket_access import READ_WRITE, grant_objects
from constructs_lib.coder_service import CoderService, CoderWorkspaceAccess
from constructs_lib.compliance import acknowledge
from constructs_lib.fargate_service import EXECUTION_POLICY, ServiceRuntime, task_role
from constructs_lib.internal_load_balancer import InternalLoadBalancer
from constructs_lib.key_provisioner_service import KeyProvisionerService
from constructs_lib.litellm_service import LiteLLMService
from constructs_lib.secret_access import SecretAccess
from constructs_lib.terraform_bridge import TerraformBridge
from constructs_lib.workspace_roles import WorkspaceRoles
from stacks.data_stack import DataStackOutputs
from stacks.network_stack import NetworkStackOutputs


@dataclass(frozen=True)
class PlatformStackOutputs:
    cluster: ecs.ICluster
    load_balancer: elbv2.IApplicationLoadBalancer
    listener: elbv2.IApplicationListener
    certificate: acm.ICertificate
    execution_role: iam.IRole
    ecs_exec_policy: iam.ManagedPolicy
    workspace_task_role: iam.IRole
    aem_workspace_task_role: iam.IRole
    workspace_execution_role: iam.IRole
    langfuse_task_role: iam.IRole
    runtime: ServiceRuntime  # for the Observability layer's services
    target_groups: dict[str, elbv2.IApplicationTargetGroup]  # coder, litellm, key-provisioner


class PlatformStack(Stack):
    """Shared runtime of the platform services.

    Non-obvious defaults:
    - The ALB is internal (private app subnets), HTTPS only with a TLS 1.2+ policy, drops invalid header fields,
      answers 404 to any host no rule claims, keeps idle connections 300 s, and logs to the Network layer's bucket.
    - The shared task execution role reads only this environment's secrets (`<prefix>/*`) and decrypts them only
      through Secrets Manager. Workspaces get their own execution role without any secret access: Coder's
      templates register workspace task definitions, and must not be able to inject platform secrets into them.
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

        cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=config.qualifier,
            vpc=network.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
            enable_fargate_capacity_providers=True,
        )

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
        )
        load_balancer, listener, certificate = balancer.load_balancer, balancer.listener, balancer.certificate

        execution_role = self._execution_role(data)
        ecs_exec_policy = iam.ManagedPolicy(
            self,
            "EcsExecPolicy",
            description=f"{config.qualifier}: ECS Exec (SSM session channels) for debugging tasks",
            statements=[
                iam.PolicyStatement(
                    sid="EcsExecSessionChannels",
                    actions=[
                        "ssmmessages:CreateControlChannel",
                        "ssmmessages:CreateDataChannel",
                        "ssmmessages:OpenControlChannel",
                        "ssmmessages:OpenDataChannel",
                    ],
                    resources=["*"],  # these actions support no resource-level permissions
                )
            ],
        )
        acknowledge(
            ecs_exec_policy,
            {
                "AwsSolutions-IAM5[Resource::*]": "The ssmmessages channel actions of ECS Exec support no resource-level "
                "permissions; opening a session still needs ecs:ExecuteCommand on the task.",
            },
        )
        workspaces = WorkspaceRoles(
            self,
            "Workspaces",
            qualifier=config.qualifier,
            artifacts_bucket=config.bucket_name(Bucket.ARTIFACTS),
            data_key=data.data_key,
        )
        secrets = SecretAccess.import_into(self, data.secrets, data.data_key)
        runtime = ServiceRuntime(
            cluster=cluster,
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.security_groups.ecs_services,
            execution_role=execution_role,
            namespace=network.namespace,
            family_prefix=config.qualifier,
            logs_key=network.logs_key,
        )
        coder = CoderService(
            self,
            "Coder",
            config=config,
            runtime=runtime,
            listener=listener,
            secrets=secrets,
            workspaces=CoderWorkspaceAccess(
                cluster_arn=cluster.cluster_arn,
                cluster_name=config.qualifier,  # the name, so that policies read as what they allow
                passable_roles=workspaces.passable,
                file_system=data.file_system,
                terraform_state_bucket=config.bucket_name(Bucket.TERRAFORM_STATE),
                lock_table_name=config.lock_table_name,
                data_key=data.data_key,
                listener=listener,
            ),
        )
        litellm = LiteLLMService(self, "LiteLLM", config=config, runtime=runtime, listener=listener, secrets=secrets)
        key_provisioner = KeyProvisionerService(
            self, "KeyProvisioner", config=config, runtime=runtime, listener=listener, secrets=secrets
        )
        # The services reach their secrets' `url` fields only after the Data layer's AppDatabases has run.
        self.services = {"coder": coder, "litellm": litellm, "key-provisioner": key_provisioner}

        self.outputs = PlatformStackOutputs(
            cluster=cluster,
            load_balancer=load_balancer,
            listener=listener,
            certificate=certificate,
            execution_role=execution_role,
            ecs_exec_policy=ecs_exec_policy,
            workspace_task_role=workspaces.task_role,
            aem_workspace_task_role=workspaces.aem_task_role,
            workspace_execution_role=workspaces.execution_role,
            langfuse_task_role=self._langfuse_task_role(data, ecs_exec_policy),
            runtime=runtime,
            target_groups={name: svc.service.target_group for name, svc in self.services.items()},
        )
        self._bridge_parameters(network, data)

    def _secret_arn_pattern(self) -> str:
        return self.format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{self._config.secret_prefix}/*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _execution_role(self, data: DataStackOutputs) -> iam.Role:
        role = task_role(
            self,
            "TaskExecutionRole",
            f"{self._config.qualifier}: pull images, write logs, read this environment's secrets",
            [EXECUTION_POLICY],
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadEnvironmentSecrets",
                actions=["secretsmanager:GetSecretValue"],
                resources=[self._secret_arn_pattern()],
            )
        )
        acknowledge(
            role,
            {
                f"AwsSolutions-IAM5[Resource::{self._secret_arn_pattern()}]": "ECS injects the platform services' "
                "secrets at task start; all of them, and only they, are under this environment's prefix.",
                "AwsSolutions-IAM5[Resource::*]": "ecr:GetAuthorizationToken (the registry login) has no resource; "
                "image pulls themselves are limited to the Key Provisioner's repository.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonECSTaskExecutionRolePolicy]": "The AWS-maintained execution policy: pull images and write "
                "container logs, nothing else.",
            },
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DecryptSecretsViaSecretsManager",
                actions=["kms:Decrypt"],
                resources=[data.data_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{self.region}.amazonaws.com"}},
            )
        )
        return role

    def _langfuse_task_role(self, data: DataStackOutputs, ecs_exec_policy: iam.IManagedPolicy) -> iam.Role:
        """Langfuse web and worker (Observability layer): the event and media buckets, nothing else."""
        role = task_role(
            self, "LangfuseTaskRole", f"{self._config.qualifier}: Langfuse web and worker (event and media uploads)"
        )
        # The Observability layer uses this role as it is (immutable there): ECS Exec must be granted here.
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

    def _bridge_parameters(self, network: NetworkStackOutputs, data: DataStackOutputs) -> None:
        outputs = self.outputs
        app_subnet_ids = network.vpc.select_subnets(subnet_group_name=network.app_subnets.subnet_group_name).subnet_ids
        TerraformBridge(
            self,
            "TerraformBridge",
            qualifier=self._config.qualifier,
            ssm_prefix=self._config.ssm_prefix,
            values={
                "ClusterArn": ("cluster-arn", outputs.cluster.cluster_arn),
                "ClusterName": ("cluster-name", outputs.cluster.cluster_name),
                # Workspaces run with the workspace execution role: it reads no secrets.
                "TaskExecutionRoleArn": ("task-execution-role-arn", outputs.workspace_execution_role.role_arn),
                "WorkspaceTaskRoleArn": ("workspace-task-role-arn", outputs.workspace_task_role.role_arn),
                "WorkspaceSecurityGroupId": ("workspace-sg-id", network.security_groups.ecs_workspaces.security_group_id),
                "PrivateSubnetIds": ("private-subnet-ids", ",".join(app_subnet_ids)),
                "EfsId": ("efs-id", data.file_system.file_system_id),
                "AlbListenerArn": ("alb-listener-arn", outputs.listener.listener_arn),
            },
        )
