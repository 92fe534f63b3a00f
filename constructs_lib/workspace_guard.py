"""The workspace guard: a function that keeps Coder's workspaces out of the platform's traffic, where IAM cannot
(`lambdas/workspace_guard/`: what it checks and why)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from constructs_lib.alarms import ONE_MINUTE, Alarms
from constructs_lib.compliance import acknowledge
from constructs_lib.python_lambda import python_code, python_function

METRIC_NAMESPACE = "CoderPlatform/WorkspaceGuard"


class WorkspaceGuard(Construct):
    """Runs every minute (4 sweeps, 15 s apart). It may read target health, task and network-interface details;
    deregister targets from the platform's target groups and from workspace (`ws-*`) target groups; delete services
    and stop tasks in the workspaces' cluster; nothing else. Its log lines count intrusions: the alarm
    `workspace-guard-intrusions` fires on one."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform_cluster: str,
        workspace_cluster: str,
        platform_target_groups: Sequence[elbv2.IApplicationTargetGroup],
        workspace_security_group: ec2.ISecurityGroup,
        logs_key: kms.IKey,
        alarms: Alarms,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)

        def arn(service: str, resource: str, name: str) -> str:
            return stack.format_arn(service=service, resource=resource, resource_name=name,
                                    arn_format=ArnFormat.SLASH_RESOURCE_NAME)

        self.function = python_function(
            self,
            "Function",
            code=python_code("workspace_guard"),
            handler="index.handler",
            timeout=Duration.seconds(90),
            description="Keeps workspaces out of the platform's target groups, Cloud Map names and security groups",
            logs_key=logs_key,
            log_group_id="Logs",
            invoked_by="its EventBridge schedule (once a minute)",
            reasons={
                "LambdaDLQ": "Run by a schedule every minute: a failed run is followed by the next a minute later and "
                "raises the function's errors alarm; a queued event would only be a stale minute.",
                "LambdaConcurrency": "One run a minute, each under 90 s: at most two at once. Reserving concurrency "
                "would take capacity from the account (and fails in new accounts with the minimum quota).",
            },
            why_outside_vpc="It calls only the ECS, Elastic Load Balancing and EC2 APIs (AWS public endpoints over "
            "TLS); it reaches nothing inside the VPC.",
            environment={
                "PLATFORM_CLUSTER": platform_cluster,
                "WORKSPACE_CLUSTER": workspace_cluster,
                "PLATFORM_TARGET_GROUPS": " ".join(group.target_group_arn for group in platform_target_groups),
                "WORKSPACE_SECURITY_GROUP": workspace_security_group.security_group_id,
            },
        )
        clusters = [arn("ecs", "cluster", platform_cluster), arn("ecs", "cluster", workspace_cluster)]
        workspace_target_groups = arn("elasticloadbalancing", "targetgroup", "ws-*/*")
        for statement in (
            iam.PolicyStatement(sid="ReadTasks", actions=["ecs:ListTasks", "ecs:DescribeTasks"], resources=["*"],
                                conditions={"ArnEquals": {"ecs:cluster": clusters}}),
            iam.PolicyStatement(sid="ListServices", actions=["ecs:ListServices"], resources=["*"],
                                conditions={"ArnEquals": {"ecs:cluster": clusters}}),
            iam.PolicyStatement(sid="ReadServices", actions=["ecs:DescribeServices"],
                                resources=[arn("ecs", "service", f"{platform_cluster}/*"),
                                           arn("ecs", "service", f"{workspace_cluster}/*")]),
            iam.PolicyStatement(sid="RemoveWorkspaceServices", actions=["ecs:DeleteService"],
                                resources=[arn("ecs", "service", f"{workspace_cluster}/*")]),
            # Workspaces an earlier release left in the platform's cluster (tagged as Coder's), never a platform service.
            iam.PolicyStatement(sid="RemoveLegacyWorkspaceServices", actions=["ecs:DeleteService"],
                                resources=[arn("ecs", "service", f"{platform_cluster}/*")],
                                conditions={"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}),
            iam.PolicyStatement(sid="StopWorkspaceTasks", actions=["ecs:StopTask"],
                                resources=[arn("ecs", "task", f"{workspace_cluster}/*")]),
            iam.PolicyStatement(sid="ReadLoadBalancing", actions=["elasticloadbalancing:DescribeTargetHealth",
                                                                  "elasticloadbalancing:DescribeTargetGroups"],
                                resources=["*"]),
            iam.PolicyStatement(sid="DeregisterIntruders", actions=["elasticloadbalancing:DeregisterTargets"],
                                resources=[*(g.target_group_arn for g in platform_target_groups), workspace_target_groups]),
            iam.PolicyStatement(sid="ReadNetworkInterfaces", actions=["ec2:DescribeNetworkInterfaces"], resources=["*"]),
        ):
            self.function.add_to_role_policy(statement)
        acknowledge(self.function.role.node.find_child("DefaultPolicy"), {
            "AwsSolutions-IAM5[Resource::*]": "Describe and list actions that support no resource-level permissions "
            "(target health and groups, network interfaces), and ECS task and service listing bounded to the two "
            "clusters by condition; all read-only.",
            f"AwsSolutions-IAM5[Resource::{arn('ecs', 'service', f'{workspace_cluster}/*')}]": "Workspace services, "
            "named by Coder at run time; the guard deletes only those that reach into the platform.",
            f"AwsSolutions-IAM5[Resource::{arn('ecs', 'service', f'{platform_cluster}/*')}]": "It reads the platform "
            "services (whose tasks may be targets); it deletes only services tagged coder_provisioned there.",
            f"AwsSolutions-IAM5[Resource::{arn('ecs', 'task', f'{workspace_cluster}/*')}]": "Workspace tasks, "
            "named by ECS; the guard stops only those outside the workspaces' security group.",
            f"AwsSolutions-IAM5[Resource::{workspace_target_groups}]": "Direct-access target groups Coder creates "
            "(ws-*); the guard removes only platform tasks' addresses from them.",
        })

        self.schedule = events.Rule(
            self, "Schedule", schedule=events.Schedule.rate(Duration.minutes(1)),
            description="Runs the workspace guard every minute",
        )
        # The target and its permission by hand: CDK's LambdaFunction target names the permission after the Stage.
        cfn_rule: events.CfnRule = self.schedule.node.default_child  # type: ignore[assignment]
        cfn_rule.targets = [events.CfnRule.TargetProperty(
            id="WorkspaceGuard", arn=self.function.function_arn,
            retry_policy=events.CfnRule.RetryPolicyProperty(maximum_retry_attempts=0),
        )]
        self.function.add_permission("RunBySchedule", principal=iam.ServicePrincipal("events.amazonaws.com"),
                                     source_arn=self.schedule.rule_arn)
        intrusions = logs.MetricFilter(
            self, "Intrusions", log_group=self.function.log_group, metric_namespace=METRIC_NAMESPACE,
            metric_name=f"{workspace_cluster}-intrusions", filter_pattern=logs.FilterPattern.number_value("$.intrusions", ">=", 0),
            metric_value="$.intrusions", default_value=0,
        )
        self.alarm = alarms.alarm(
            self, "IntrusionsAlarm", name="workspace-guard-intrusions", threshold=0, periods=1,
            metric=intrusions.metric(statistic="Sum", period=ONE_MINUTE),
            description="The workspace guard removed a workspace service, task or target that reached into the "
            "platform (a platform target group, Cloud Map, another security group, a public IP). Look first at the "
            "guard's log group (each action with its reason), then at who created it (CloudTrail: ecs:CreateService "
            "by Coder's role) and at the template that did.",
        )
