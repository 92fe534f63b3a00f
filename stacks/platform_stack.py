"""PlatformStack: ECS cluster, internal HTTPS ALB, ACM certificate, IAM roles, SSM bridge for Terraform, and the
Coder, LiteLLM and Key Provisioner services."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.bucket_access import READ, READ_WRITE, grant_objects
from constructs_lib.coder_service import CoderService, CoderWorkspaceAccess
from constructs_lib.compliance import acknowledge
from constructs_lib.fargate_service import ServiceRuntime, task_role
from constructs_lib.key_provisioner_service import KeyProvisionerService
from constructs_lib.litellm_service import LiteLLMService
from constructs_lib.secret_access import SecretAccess
from stacks.data_stack import BUCKET_SUFFIXES, LOCK_TABLE_SUFFIX, DataStackOutputs
from stacks.network_stack import NetworkStackOutputs

ALB_IDLE_TIMEOUT = Duration.seconds(300)  # Coder's WebSockets (DERP keepalive 60 s) must outlive idle periods
EXECUTION_POLICY = "service-role/AmazonECSTaskExecutionRolePolicy"  # ECR pulls and log writes


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

        certificate = acm.Certificate(
            self,
            "Certificate",
            domain_name=config.domain,
            subject_alternative_names=[f"*.{config.domain}"],
            validation=acm.CertificateValidation.from_dns(
                route53.HostedZone.from_hosted_zone_attributes(
                    self, "HostedZone", hosted_zone_id=config.hosted_zone_id, zone_name=config.domain
                )
                if config.hosted_zone_id
                else None
            ),
        )

        load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=network.vpc,
            vpc_subnets=network.app_subnets,
            internet_facing=False,
            security_group=network.security_groups.alb,
            idle_timeout=ALB_IDLE_TIMEOUT,
            drop_invalid_header_fields=True,
            http2_enabled=True,
            deletion_protection=config.is_production,
        )
        load_balancer.log_access_logs(network.access_logs_bucket, prefix="alb")
        reasons = {
            "ALBWAFEnabled": "Internal load balancer, reachable only from inside the VPC. AWS managed WAF rules would "
            "block legitimate traffic here (LLM request bodies above 8 KB, Coder's WebSockets); every service "
            "authenticates its callers (Coder sessions, LiteLLM keys, Langfuse keys, ALB sign-in for admin).",
        }
        if not config.is_production:
            reasons["ELBDeletionProtectionEnabled"] = (
                "Staging is rebuilt at will; production's load balancer has deletion protection."
            )
        acknowledge(load_balancer, reasons)
        listener = load_balancer.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_certificate_manager(certificate)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # the ALB security group already admits 443 from the VPC only
            default_action=elbv2.ListenerAction.fixed_response(
                404, content_type="text/plain", message_body="Not found"
            ),
        )

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
        workspace_role, aem_workspace_role = self._workspace_roles(data)
        workspace_execution_role = task_role(
            self,
            "WorkspaceExecutionRole",
            f"{config.qualifier}: workspace tasks: pull images and write logs (no secrets)",
            [EXECUTION_POLICY],
        )
        acknowledge(
            workspace_execution_role,
            {
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonECSTaskExecutionRolePolicy]": "The AWS-maintained execution policy: pull images and write "
                "container logs, nothing else; this role reads no secret.",
            },
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
                passable_roles=(workspace_role, aem_workspace_role, workspace_execution_role),
                file_system=data.file_system,
                terraform_state_bucket=config.global_name(BUCKET_SUFFIXES["terraform_state"]),
                lock_table_name=f"{config.qualifier}-{LOCK_TABLE_SUFFIX}",
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
            workspace_task_role=workspace_role,
            aem_workspace_task_role=aem_workspace_role,
            workspace_execution_role=workspace_execution_role,
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

    def _workspace_roles(self, data: DataStackOutputs) -> tuple[iam.Role, iam.Role]:
        log_group_arn = self.format_arn(
            service="logs",
            resource="log-group",
            resource_name=f"/{self._config.qualifier}/workspaces*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        write_logs = iam.PolicyStatement(
            sid="WriteWorkspaceLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group_arn, f"{log_group_arn}:log-stream:*"],
        )
        workspace = task_role(
            self, "WorkspaceTaskRole", f"{self._config.qualifier}: Coder workspaces (CloudWatch Logs only)"
        )
        workspace.add_to_policy(write_logs)
        aem = task_role(
            self,
            "AemWorkspaceTaskRole",
            f"{self._config.qualifier}: AEM workspaces (CloudWatch Logs, read the artifacts bucket)",
        )
        aem.add_to_policy(write_logs)
        grant_objects(
            aem,
            [self._config.global_name(BUCKET_SUFFIXES["artifacts"])],
            READ,
            data.data_key,
            sid="ReadArtifacts",
            reason="AEM workspaces install any of the build artifacts kept in the artifacts bucket; read only.",
        )
        workspace_logs = (
            "Workspace tasks write to log groups that Coder's templates name per workspace, all under "
            f"/{self._config.qualifier}/workspaces; nothing else."
        )
        for role in (workspace, aem):
            acknowledge(
                role,
                {
                    f"AwsSolutions-IAM5[Resource::{log_group_arn}]": workspace_logs,
                    f"AwsSolutions-IAM5[Resource::{log_group_arn}:log-stream:*]": workspace_logs,
                },
            )
        return workspace, aem

    def _langfuse_task_role(self, data: DataStackOutputs, ecs_exec_policy: iam.IManagedPolicy) -> iam.Role:
        """Langfuse web and worker (Observability layer): the event and media buckets, nothing else."""
        role = task_role(
            self, "LangfuseTaskRole", f"{self._config.qualifier}: Langfuse web and worker (event and media uploads)"
        )
        # The Observability layer uses this role as it is (immutable there): ECS Exec must be granted here.
        role.add_managed_policy(ecs_exec_policy)
        grant_objects(
            role,
            [self._config.global_name(BUCKET_SUFFIXES[name]) for name in ("langfuse_events", "langfuse_media")],
            READ_WRITE,
            data.data_key,
            sid="Langfuse",
            reason="Langfuse writes every ingested event and media file under its own keys in these two buckets, "
            "reads them back and deletes them on retention or deletion requests.",
        )
        return role

    def _bridge_parameters(self, network: NetworkStackOutputs, data: DataStackOutputs) -> None:
        """The CDK -> Terraform bridge: the ids Coder's workspace templates read with `aws_ssm_parameter`."""
        outputs = self.outputs
        app_subnet_ids = network.vpc.select_subnets(subnet_group_name=network.app_subnets.subnet_group_name).subnet_ids
        values = {
            "ClusterArn": ("cluster-arn", outputs.cluster.cluster_arn),
            "ClusterName": ("cluster-name", outputs.cluster.cluster_name),
            # Workspaces run with the workspace execution role: it reads no secrets.
            "TaskExecutionRoleArn": ("task-execution-role-arn", outputs.workspace_execution_role.role_arn),
            "WorkspaceTaskRoleArn": ("workspace-task-role-arn", outputs.workspace_task_role.role_arn),
            "WorkspaceSecurityGroupId": ("workspace-sg-id", network.security_groups.ecs_workspaces.security_group_id),
            "PrivateSubnetIds": ("private-subnet-ids", ",".join(app_subnet_ids)),
            "EfsId": ("efs-id", data.file_system.file_system_id),
            "AlbListenerArn": ("alb-listener-arn", outputs.listener.listener_arn),
        }
        for construct_id, (name, value) in values.items():
            ssm.StringParameter(
                self,
                f"{construct_id}Parameter",
                parameter_name=f"{self._config.ssm_prefix}{name}",
                string_value=value,
                description=f"{self._config.qualifier} {name} for Coder's Terraform workspace templates",
            )
