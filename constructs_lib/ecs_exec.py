"""ECS Exec (shell access into running tasks), when an environment allows it: every session is logged."""

from __future__ import annotations

from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from constructs_lib.compliance import acknowledge
from constructs_lib.python_lambda import encrypted_log_group
from constructs_lib.stable_ids import Group

SESSION_CHANNELS = (
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
)


class EcsExec(Group):
    """The cluster's ECS Exec settings: sessions encrypted with `key` and logged (commands and output) to an encrypted
    log group kept a year; and a managed policy with what a task role needs for it, for roles that CDK cannot grant
    (imported ones). Services with `enable_execute_command` get the same grants from CDK on their own task roles."""

    def __init__(self, scope: Construct, construct_id: str, *, qualifier: str, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.log_group_name = f"/{qualifier}/ecs-exec"
        self.log_group = encrypted_log_group(self, "EcsExecLogs", key, self.log_group_name)
        # The cluster names the group by its literal name, so that the grants CDK gives each task role read as
        # `log-group:/<qualifier>/ecs-exec:*` (acknowledged by FargateService) rather than a token.
        self.configuration = ecs.ExecuteCommandConfiguration(
            kms_key=key,
            logging=ecs.ExecuteCommandLogging.OVERRIDE,
            log_configuration=ecs.ExecuteCommandLogConfiguration(
                cloud_watch_log_group=logs.LogGroup.from_log_group_name(self, "SessionLogs", self.log_group_name),
                cloud_watch_encryption_enabled=True,
            ),
        )
        self.policy = iam.ManagedPolicy(
            self,
            "EcsExecPolicy",
            description=f"{qualifier}: ECS Exec (SSM session channels, session logs) for debugging tasks",
            statements=[
                # These actions support no resource-level permissions.
                iam.PolicyStatement(sid="EcsExecSessionChannels", actions=list(SESSION_CHANNELS), resources=["*"]),
                iam.PolicyStatement(sid="EcsExecSessionKey", actions=["kms:Decrypt"], resources=[key.key_arn]),
                iam.PolicyStatement(sid="EcsExecFindLogGroup", actions=["logs:DescribeLogGroups"], resources=["*"]),
                iam.PolicyStatement(
                    sid="EcsExecSessionLogs",
                    actions=["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
                    resources=[self.log_group.log_group_arn],
                ),
            ],
        )
        reason = (
            "ECS Exec's ssmmessages channel actions and logs:DescribeLogGroups support no resource-level permissions; "
            "opening a session still needs ecs:ExecuteCommand on the task, and every session is logged."
        )
        acknowledge(self.policy, {"AwsSolutions-IAM5[Resource::*]": reason})
