"""The smoke-test probe inside a Stage: the handler in `lambdas/smoke_probe/` as a Lambda in the app subnets, and the
role the pipeline account assumes to run it and to read target health."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aws_cdk import ArnFormat, CfnOutput, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.compliance import acknowledge
from constructs_lib.python_lambda import FunctionNetwork, python_code, python_function
from constructs_lib.service_catalogue import SERVICES

PROBE_TIMEOUT = Duration.minutes(5)
MAX_DEADLINE_SECONDS = 270  # the checks' own deadline, inside the function's timeout


def smoke_checks(config: EnvironmentConfig) -> list[str]:
    """What "the platform answers" means: the service catalogue's smoke check of each routed service, through the
    ALB with the service's host name. A sign-in route passes only on the redirect to the identity provider's
    authorization endpoint, and fails on a 2xx (the UI would be open without sign-in)."""
    idp_host = urlsplit(config.oidc.authorization_endpoint).hostname or ""
    return [check for service in SERVICES if (check := service.smoke_check(config.domain, idp_host))]


@dataclass(frozen=True)
class SmokeOutputs:
    function_name: CfnOutput
    role_arn: CfnOutput
    checks: CfnOutput
    target_groups: CfnOutput


class SmokeProbe(Construct):
    """Defaults:
    - The function runs `lambdas/smoke_probe/` (the checks `python -m pipeline.smoke` runs) in the private app subnets with its own
      security group, which may only open HTTPS to the ALB. It calls the ALB by its DNS name with each service's
      SNI and Host, verifying certificates against the system's CAs (the ALB presents the ACM certificate).
    - The role `<project>-<env>-smoke-tests` trusts only the pipeline's smoke step of this environment
      (`smoke_step_role_name`) and may only invoke this function and read target health.
    - CfnOutputs carry what the pipeline's post-step needs (function, role, checks, target groups).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        pipeline_account: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        load_balancer: elbv2.IApplicationLoadBalancer,
        target_groups: Sequence[elbv2.IApplicationTargetGroup],
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        checks = smoke_checks(config)
        self.function = python_function(
            self,
            "Function",
            code=python_code("smoke_probe"),
            handler="index.handler",
            timeout=PROBE_TIMEOUT,
            description="Smoke tests: calls every service through the internal ALB with its own host name and TLS",
            logs_key=logs_key,
            log_group_id="Logs",
            invoked_by="the pipeline's smoke-test step",
            network=FunctionNetwork(vpc, subnets, security_group),
            environment={
                "SMOKE_CONNECT": f"{load_balancer.load_balancer_dns_name}:443",
                "SMOKE_CHECKS": " ".join(checks),
                "SMOKE_MAX_DEADLINE": str(MAX_DEADLINE_SECONDS),
            },
        )
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "Role",
            role_name=f"{config.qualifier}-smoke-tests",
            description=f"{config.qualifier}: the pipeline's smoke tests (invoke the probe, read target health)",
            # Exactly the pipeline's smoke step of this environment: no other role of the pipeline account.
            assumed_by=iam.AccountPrincipal(pipeline_account).with_conditions(
                {"ArnEquals": {"aws:PrincipalArn": f"arn:{stack.partition}:iam::{pipeline_account}:role/"
                                                   f"{smoke_step_role_name(config)}"}}
            ),
            max_session_duration=Duration.hours(1),
        )
        self.role.add_to_policy(
            iam.PolicyStatement(sid="InvokeProbe", actions=["lambda:InvokeFunction"], resources=[self.function.function_arn])
        )
        acknowledge(
            self.role,
            {
                "AwsSolutions-IAM5[Resource::*]": "elasticloadbalancing:DescribeTargetHealth supports no resource-level "
                "permissions; it only reads health states.",
            },
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadTargetHealth",
                actions=["elasticloadbalancing:DescribeTargetHealth"],
                resources=["*"],  # Describe* actions of Elastic Load Balancing support no resource-level permissions
            )
        )
        if config.release.bake_minutes:
            # The bake after the smoke tests reads this environment's alarm states (pipeline/smoke.py --bake-minutes).
            alarms = stack.format_arn(service="cloudwatch", resource="alarm", resource_name=f"{config.qualifier}-*",
                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)
            self.role.add_to_policy(
                iam.PolicyStatement(sid="ReadAlarmStates", actions=["cloudwatch:DescribeAlarms"], resources=[alarms])
            )
            acknowledge(self.role, {
                f"AwsSolutions-IAM5[Resource::{stack.resolve(alarms)}]": "The alarms of this environment (every one is "
                f"named {config.qualifier}-<what>), whose states the bake reads; DescribeAlarms reads states and "
                "settings, never changes them.",
            })

        self.outputs = SmokeOutputs(
            function_name=CfnOutput(self, "FunctionName", value=self.function.function_name,
                                    description="Smoke-test probe Lambda"),
            role_arn=CfnOutput(self, "RoleArn", value=self.role.role_arn,
                               description="Role the pipeline assumes for smoke tests"),
            checks=CfnOutput(self, "Checks", value=" ".join(checks), description="NAME=HOST/PATH checks"),
            target_groups=CfnOutput(
                self, "TargetGroups", value=" ".join(tg.target_group_arn for tg in target_groups),
                description="Target groups whose targets must all be healthy",
            ),
        )


def smoke_step_role_name(config: EnvironmentConfig) -> str:
    """The role of the pipeline's smoke step for this environment (pipeline account), named before deployment: the
    only principal the environment's smoke-test role trusts."""
    return f"{config.project}-pipeline-smoke-{config.name}"


def smoke_role_arn(config: EnvironmentConfig, partition: str = "aws") -> str:
    """The smoke-test role's ARN, known before deployment (the pipeline's CodeBuild role may assume exactly it)."""
    return f"arn:{partition}:iam::{config.account}:role/{config.qualifier}-smoke-tests"
