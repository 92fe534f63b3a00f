"""The IAM roles Coder's workspace task definitions may carry: the only ones Coder is allowed to pass."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from constructs_lib.bucket_access import READ, grant_objects
from constructs_lib.compliance import acknowledge
from constructs_lib.fargate_service import ECS_TASKS, task_role
from constructs_lib.stable_ids import Group


class WorkspaceRoles(Group):
    """Three roles: workspace tasks (CloudWatch Logs, their home directory on the workspaces' file system through an
    access point), AEM workspace tasks (the same, and read the artifacts bucket),
    and the workspaces' execution role (pull images but the platform's own, write logs, no secret: a template can
    never inject a platform secret into a workspace). Logs go to `/<qualifier>/workspaces*` only."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        qualifier: str,
        artifacts_bucket: str,
        data_key: kms.IKey,
        file_system: efs.IFileSystem,
        platform_repositories: tuple[str, ...] = (),  # ARNs of the ECR repositories of the platform's own images
    ) -> None:
        super().__init__(scope, construct_id)
        log_group_arn = Stack.of(self).format_arn(
            service="logs",
            resource="log-group",
            resource_name=f"/{qualifier}/workspaces*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        write_logs = iam.PolicyStatement(
            sid="WriteWorkspaceLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group_arn, f"{log_group_arn}:log-stream:*"],
        )
        # Home directories: the workspaces' file system, through an access point (which Coder creates per workspace);
        # the file system's own policy refuses any other mount, and root.
        mount_homes = iam.PolicyStatement(
            sid="MountHomeDirectories",
            actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
            resources=[file_system.file_system_arn],
            conditions={"Null": {"elasticfilesystem:AccessPointArn": "false"}},
        )
        self.task_role = task_role(
            self, "WorkspaceTaskRole", f"{qualifier}: Coder workspaces (CloudWatch Logs, home directory)"
        )
        self.aem_task_role = task_role(
            self,
            "AemWorkspaceTaskRole",
            f"{qualifier}: AEM workspaces (CloudWatch Logs, home directory, read the artifacts bucket)",
        )
        for role in (self.task_role, self.aem_task_role):
            role.add_to_policy(write_logs)
            role.add_to_policy(mount_homes)
        grant_objects(
            self.aem_task_role,
            [artifacts_bucket],
            READ,
            data_key,
            sid="ReadArtifacts",
            reason="AEM workspaces install any of the build artifacts kept in the artifacts bucket; read only.",
        )
        workspace_logs = (
            f"Workspace tasks write to log groups that Coder's templates name per workspace, all under /{qualifier}/"
            "workspaces; nothing else."
        )
        for role in (self.task_role, self.aem_task_role):
            acknowledge(
                role,
                {
                    f"AwsSolutions-IAM5[Resource::{log_group_arn}]": workspace_logs,
                    f"AwsSolutions-IAM5[Resource::{log_group_arn}:log-stream:*]": workspace_logs,
                },
            )
        # Not AWS's execution policy (container logs to any log group, pulls from any repository): a template could
        # write into a platform service's log group, or pull the platform's private images.
        self.execution_role = iam.Role(
            self,
            "WorkspaceExecutionRole",
            assumed_by=iam.ServicePrincipal(ECS_TASKS),  # as ECS documents an execution role's trust
            description=f"{qualifier}: workspace tasks: pull images and write logs (no secrets)",
        )
        self.execution_role.add_to_policy(write_logs)
        self.execution_role.add_to_policy(
            iam.PolicyStatement(sid="RegistryLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"])
        )
        # Any account's and region's (a template may use a registry of its team's), but the platform's.
        repositories = f"arn:{Stack.of(self).partition}:ecr:*:*:repository/*"
        self.execution_role.add_to_policy(
            iam.PolicyStatement(
                sid="PullImages",
                actions=["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                resources=[repositories],
            )
        )
        if platform_repositories:
            self.execution_role.add_to_policy(
                iam.PolicyStatement(
                    sid="NotThePlatformsImages",
                    effect=iam.Effect.DENY,
                    actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                    resources=list(platform_repositories),
                )
            )
        acknowledge(
            self.execution_role,
            {
                f"AwsSolutions-IAM5[Resource::{log_group_arn}]": workspace_logs,
                f"AwsSolutions-IAM5[Resource::{log_group_arn}:log-stream:*]": workspace_logs,
                "AwsSolutions-IAM5[Resource::*]": "ecr:GetAuthorizationToken (the registry login) has no resource.",
                f"AwsSolutions-IAM5[Resource::{repositories}]": "Workspace images come from repositories the "
                "templates choose; pulls from the platform's own repositories are denied.",
            },
        )

    @property
    def passable(self) -> tuple[iam.IRole, ...]:
        return (self.task_role, self.aem_task_role, self.execution_role)
