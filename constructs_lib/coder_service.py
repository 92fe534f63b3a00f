"""Coder: the workspace control plane (one task: high availability is a licensed feature)."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.bucket_access import READ_WRITE, grant_objects
from constructs_lib.compliance import acknowledge
from constructs_lib.fargate_service import ECS_TASKS, EfsMount, FargateService, Listener, ServiceRuntime, ServiceSpec, task_role
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import CODER

CODER_UID = "1000"  # the `coder` user of the official image
CONFIG_DIR = "/home/coder/.config/coderv2"


@dataclass(frozen=True)
class CoderWorkspaceAccess:
    """What Coder's Terraform provisioner manages for workspaces, and nothing more."""

    cluster_arn: str  # the workspaces' own cluster: no platform service runs there
    cluster_name: str
    # The platform's cluster, where earlier releases placed workspaces: Coder may still stop and delete the workspace
    # services left there (tagged coder_provisioned), never a platform service.
    platform_cluster_name: str
    platform_task_families: tuple[str, ...]  # task definition families of the platform services: never Coder's
    passable_roles: tuple[iam.IRole, ...]  # the only roles workspace task definitions may carry
    file_system: efs.IFileSystem  # the workspaces' file system: Coder's templates create access points on it
    terraform_state_bucket: str  # name
    lock_table_name: str
    data_key: kms.IKey  # encrypts the state bucket
    # Workspace direct access (feature flag): the listener Coder adds its rules to; it carries no platform route.
    direct_access_listener: elbv2.IApplicationListener | None


class CoderService(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        listener: elbv2.IApplicationListener,
        secrets: SecretAccess,
        workspaces: CoderWorkspaceAccess,
        config_file_system: efs.IFileSystem,  # the platform's: out of the workspaces' reach
    ) -> None:
        super().__init__(scope, construct_id)
        self.task_role = task_role(
            self, "TaskRole", f"{config.qualifier}: Coder (workspace provisioning with Terraform)"
        )
        _grant_workspace_provisioning(self.task_role, config, workspaces)

        access_point = efs.AccessPoint(
            self,
            "ConfigAccessPoint",
            file_system=config_file_system,
            path="/coder",
            create_acl=efs.Acl(owner_uid=CODER_UID, owner_gid=CODER_UID, permissions="750"),
            posix_user=efs.PosixUser(uid=CODER_UID, gid=CODER_UID),
        )
        domain = config.domain
        access, wildcard = CODER.routes
        spec = ServiceSpec(
            service=CODER,
            image=config.images.coder,
            cpu=config.tasks.coder.cpu,
            memory_mib=config.tasks.coder.memory_mib,
            desired_count=config.services.coder_desired_count,
            environment={
                "CODER_ACCESS_URL": f"https://{access.host_name(domain)}",
                "CODER_WILDCARD_ACCESS_URL": wildcard.host_name(domain),
                "CODER_HTTP_ADDRESS": f"0.0.0.0:{CODER.port}",
                "CODER_SECURE_AUTH_COOKIE": "true",
                "CODER_OIDC_ISSUER_URL": config.oidc.issuer_url,
                "CODER_OIDC_CLIENT_ID": config.oidc.client_id,
                "CODER_OIDC_ALLOW_SIGNUPS": "true",
                # Sign-up is open to the tenant's accounts in these domains only, not to any account of the tenant.
                "CODER_OIDC_EMAIL_DOMAIN": ",".join(config.oidc.allowed_email_domains),
                # Entra ID (Coder's Microsoft guide): users without a mail attribute sign in by their UPN, and
                # offline_access gives refresh tokens, so sessions renew instead of ending at token expiry. The app
                # registration must add the `upn` optional claim to the ID token (config comments, README).
                "CODER_OIDC_EMAIL_FIELD": "upn",
                "CODER_OIDC_SCOPES": "openid,profile,email,offline_access",
                # Behind an ALB the DERP relay's HTTP upgrade fails; WebSockets pass.
                "CODER_DERP_FORCE_WEBSOCKETS": "true",
                # Relayed connections only. No UDP can reach a workspace (its security group admits TCP from the
                # ALB alone, and neither it nor Coder's may send UDP out but DNS), so STUN (UDP 19302 to public
                # servers) could only find the NAT gateway's address, and every peer-to-peer attempt would wait for
                # nothing before falling back to the relay: STUN off, direct connections off (Coder's air-gap setup).
                "CODER_DERP_SERVER_STUN_ADDRESSES": "disable",
                "CODER_BLOCK_DIRECT": "true",
                # Apps on their own subdomains only (the wildcard URL above): a path-based app runs on Coder's own
                # origin, where a workspace's JavaScript could call Coder's API as the signed-in user.
                "CODER_DISABLE_PATH_APPS": "true",
                "CODER_TELEMETRY_ENABLE": "false",  # CODER_TELEMETRY is its deprecated alias
                "CODER_CACHE_DIRECTORY": "/home/coder/.cache/coder",
            },
            secrets={
                "CODER_PG_CONNECTION_URL": ecs.Secret.from_secrets_manager(secrets["coder/database"], "url"),
                "CODER_OIDC_CLIENT_SECRET": ecs.Secret.from_secrets_manager(secrets["coder/oidc"], "client_secret"),
            },
            stateless=False,  # management plane; its config directory is on EFS
            # One Coder at a time: the old task stops before the new one starts (no unlicensed second replica
            # on the same config directory).
            min_healthy_percent=0,
            max_healthy_percent=100,
            health_check_grace=Duration.seconds(180),
            efs_mounts=(EfsMount(config_file_system, access_point, CONFIG_DIR),),
        )
        self.service = FargateService(
            self,
            "Service",
            runtime=runtime,
            spec=spec,
            task_role=self.task_role,
            listener=Listener(listener, domain),
        )


def _grant_workspace_provisioning(role: iam.Role, config: EnvironmentConfig, access: CoderWorkspaceAccess) -> None:
    stack = Stack.of(role)

    def arn(service: str, resource: str, name: str, fmt: ArnFormat = ArnFormat.SLASH_RESOURCE_NAME) -> str:
        return stack.format_arn(service=service, resource=resource, resource_name=name, arn_format=fmt)

    in_workspace_cluster = {"ArnEquals": {"ecs:cluster": access.cluster_arn}}
    statements = [
        # ECS gives DescribeTaskDefinition and DeregisterTaskDefinition no resource-level permissions: Coder may read
        # any task definition, and deregister none (a platform service's revision made INACTIVE could no longer be
        # rolled back to). Workspace templates keep their revisions (`skip_destroy = true`).
        iam.PolicyStatement(sid="ReadTaskDefinitions", actions=["ecs:DescribeTaskDefinition"], resources=["*"]),
        iam.PolicyStatement(
            sid="RegisterWorkspaceTaskDefinitions",
            actions=["ecs:RegisterTaskDefinition"],
            resources=[arn("ecs", "task-definition", "*")],
        ),
        # Never a revision in a platform service's family: an operator who deploys a family's latest revision
        # would otherwise deploy Coder's.
        iam.PolicyStatement(
            sid="NoPlatformTaskDefinitionFamilies",
            effect=iam.Effect.DENY,
            actions=["ecs:RegisterTaskDefinition"],
            resources=[arn("ecs", "task-definition", f"{family}:*") for family in access.platform_task_families],
        ),
        iam.PolicyStatement(
            sid="WorkspaceServices",
            actions=["ecs:CreateService", "ecs:UpdateService", "ecs:DeleteService", "ecs:DescribeServices"],
            resources=[arn("ecs", "service", f"{access.cluster_name}/*")],
        ),
        # Workspaces an earlier release placed in the platform's cluster: Coder can stop and remove them (Terraform
        # replaces each in the workspaces' cluster); a platform service has no coder_provisioned tag, and Coder can
        # tag nothing but what it creates.
        iam.PolicyStatement(
            sid="LegacyWorkspaceServices",
            actions=["ecs:UpdateService", "ecs:DeleteService", "ecs:DescribeServices"],
            resources=[arn("ecs", "service", f"{access.platform_cluster_name}/*")],
            conditions={"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}},
        ),
        iam.PolicyStatement(
            sid="RunWorkspaceTasks",
            actions=["ecs:RunTask"],
            resources=[arn("ecs", "task-definition", "*")],
            conditions=in_workspace_cluster,
        ),
        iam.PolicyStatement(
            sid="WorkspaceTasks",
            actions=["ecs:StopTask", "ecs:DescribeTasks"],
            resources=[arn("ecs", "task", f"{access.cluster_name}/*")],
        ),
        iam.PolicyStatement(
            sid="ListWorkspaceTasks", actions=["ecs:ListTasks"], resources=["*"], conditions=in_workspace_cluster
        ),
        iam.PolicyStatement(
            sid="TagOnCreate",
            actions=["ecs:TagResource"],
            resources=["*"],
            conditions={"StringEquals": {"ecs:CreateAction": ["CreateService", "RegisterTaskDefinition", "RunTask"]}},
        ),
        iam.PolicyStatement(
            sid="PassWorkspaceRolesToEcsTasks",
            actions=["iam:PassRole"],
            resources=[r.role_arn for r in access.passable_roles],
            conditions={"StringEquals": {"iam:PassedToService": ECS_TASKS}},
        ),
        iam.PolicyStatement(sid="DescribeNetwork", actions=["ec2:Describe*"], resources=["*"]),
        # Access points on the workspaces' file system only (the platform's data is on another one), tagged as
        # Coder's when created: only those may it later tag, change or delete.
        iam.PolicyStatement(
            sid="WorkspaceAccessPoints",
            actions=["elasticfilesystem:CreateAccessPoint"],
            resources=[access.file_system.file_system_arn],
            conditions={"StringEquals": {"aws:RequestTag/coder_provisioned": "true"}},
        ),
        iam.PolicyStatement(
            sid="DescribeWorkspaceAccessPoints",
            actions=["elasticfilesystem:DescribeAccessPoints"],
            resources=[access.file_system.file_system_arn],
        ),
        iam.PolicyStatement(
            sid="WorkspaceAccessPointTagsOnCreate",
            actions=["elasticfilesystem:TagResource"],
            resources=[arn("elasticfilesystem", "access-point", "*")],
            conditions={"StringEquals": {"elasticfilesystem:CreateAction": "CreateAccessPoint"}},
        ),
        iam.PolicyStatement(
            sid="WorkspaceAccessPointLifecycle",
            actions=[
                "elasticfilesystem:DeleteAccessPoint",
                "elasticfilesystem:DescribeAccessPoints",
                "elasticfilesystem:TagResource",
            ],
            resources=[arn("elasticfilesystem", "access-point", "*")],
            conditions={"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}},
        ),
        iam.PolicyStatement(
            sid="ReadBridgeParameters",
            actions=["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
            resources=[arn("ssm", "parameter", f"{config.qualifier}/*")],
        ),
        iam.PolicyStatement(
            sid="WorkspaceLogGroups",
            actions=["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:DeleteLogGroup", "logs:TagResource"],
            resources=[arn("logs", "log-group", f"/{config.qualifier}/workspaces*", ArnFormat.COLON_RESOURCE_NAME)],
        ),
        iam.PolicyStatement(sid="DescribeLogGroups", actions=["logs:DescribeLogGroups"], resources=["*"]),
    ]
    if access.direct_access_listener is not None:
        target_groups = arn("elasticloadbalancing", "targetgroup", "ws-*/*")
        rules = arn("elasticloadbalancing", "listener-rule", "app/*")
        statements += [
            iam.PolicyStatement(
                sid="DirectAccessTargetGroups",
                actions=[
                    "elasticloadbalancing:CreateTargetGroup",
                    "elasticloadbalancing:DeleteTargetGroup",
                    "elasticloadbalancing:ModifyTargetGroup",
                    "elasticloadbalancing:ModifyTargetGroupAttributes",
                    "elasticloadbalancing:RegisterTargets",
                    "elasticloadbalancing:DeregisterTargets",
                    "elasticloadbalancing:AddTags",
                ],
                resources=[target_groups],
            ),
            # Rules only on the direct-access listener, which routes no platform host: Coder can never add a rule
            # ahead of coder./ai./langfuse./admin. on the platform's listener.
            iam.PolicyStatement(
                sid="DirectAccessRules",
                actions=["elasticloadbalancing:CreateRule"],
                resources=[access.direct_access_listener.listener_arn],
            ),
            # Tags only while creating a rule: Coder cannot tag a platform rule as its own to change it later.
            iam.PolicyStatement(
                sid="DirectAccessRuleTagsOnCreate",
                actions=["elasticloadbalancing:AddTags"],
                resources=[rules],
                conditions={"StringEquals": {"elasticloadbalancing:CreateAction": "CreateRule"}},
            ),
            iam.PolicyStatement(
                sid="DirectAccessRuleLifecycle",
                actions=["elasticloadbalancing:ModifyRule", "elasticloadbalancing:DeleteRule"],
                resources=[rules],
                conditions={"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}},
            ),
            iam.PolicyStatement(
                sid="DescribeLoadBalancing", actions=["elasticloadbalancing:Describe*"], resources=["*"]
            ),
        ]
    statements.append(
        iam.PolicyStatement(
            sid="TerraformLocks",
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:DescribeTable"],
            resources=[arn("dynamodb", "table", access.lock_table_name)],
        )
    )
    statements.append(
        iam.PolicyStatement(
            sid="TerraformLocksKey",  # the table is encrypted with the data key; only through DynamoDB
            actions=["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"],
            resources=[access.data_key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{stack.region}.amazonaws.com"}},
        )
    )
    for statement in statements:
        role.add_to_policy(statement)
    grant_objects(
        role,
        [access.terraform_state_bucket],
        READ_WRITE,
        access.data_key,
        sid="TerraformState",
        reason="Terraform keeps one state object per workspace in this bucket, named by Coder at run time.",
    )
    _acknowledge_provisioning(role, config, access, arn)


def _acknowledge_provisioning(role: iam.Role, config: EnvironmentConfig, access: CoderWorkspaceAccess, arn) -> None:
    """Why each wildcard of Coder's provisioning permissions is bounded (see the statements above)."""
    reasons = {
        "Resource::*": "Only actions without resource-level permissions (DescribeTaskDefinition, ec2/elb "
        "Describe*, logs:DescribeLogGroups) or ones bounded by a condition (the workspaces' cluster for ListTasks, "
        "ecs:CreateAction for tags) use Resource *.",
        "Action::ec2:Describe*": "Terraform reads subnets, security groups and network interfaces; read-only.",
        f"Resource::{arn('ecs', 'task-definition', '*')}": "Workspace task definitions are registered under names "
        "the templates choose; never in a platform service's family (explicit deny), and they may carry only the "
        "workspace roles (iam:PassRole). Tasks run only in the workspaces' cluster.",
        f"Resource::{arn('ecs', 'service', f'{access.cluster_name}/*')}": "Workspaces are ECS services that Coder "
        "creates and deletes by name, in the workspaces' own cluster, where no platform service runs.",
        f"Resource::{arn('ecs', 'task', f'{access.cluster_name}/*')}": "Workspace tasks, in the workspaces' own "
        "cluster only.",
        f"Resource::{arn('ecs', 'service', f'{access.platform_cluster_name}/*')}": "Only services tagged "
        "coder_provisioned (workspaces an earlier release placed there), to stop and delete them; platform services "
        "carry no such tag and Coder cannot tag an existing resource.",
        f"Resource::{arn('elasticfilesystem', 'access-point', '*')}": "Access-point ids are made at run time; "
        "Coder may tag one only while creating it (on the workspaces' file system, tagged coder_provisioned) and "
        "change or delete only those it tagged.",
        f"Resource::{arn('ssm', 'parameter', f'{config.qualifier}/*')}": "The SSM bridge parameters of this "
        "environment, read-only.",
        f"Resource::{arn('logs', 'log-group', f'/{config.qualifier}/workspaces*', ArnFormat.COLON_RESOURCE_NAME)}":
        "Terraform creates one log group per workspace under this environment's workspaces prefix.",
    }
    if access.direct_access_listener is not None:
        reasons.update({
            "Action::elasticloadbalancing:Describe*": "Terraform reads the listener, rules and target groups it "
            "manages; read-only.",
            f"Resource::{arn('elasticloadbalancing', 'targetgroup', 'ws-*/*')}": "Target groups that direct access "
            "makes for workspaces, named ws-*.",
            f"Resource::{arn('elasticloadbalancing', 'listener-rule', 'app/*')}": "Rule ids are made at run time. "
            "Rules are created on the direct-access listener only (no platform route there), tagged only at "
            "creation, and changed or deleted only with the coder_provisioned tag: the platform's rules are out of reach.",
        })
    acknowledge(role, {f"AwsSolutions-IAM5[{finding}]": reason for finding, reason in reasons.items()})
