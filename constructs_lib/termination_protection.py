"""Termination protection that is really applied: CDK Pipelines' deploy actions ignore a stack's setting."""

from __future__ import annotations

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from constructs_lib.python_lambda import python_code, python_function


class TerminationProtection(Construct):
    """A custom resource that turns on termination protection of its own stack on every create and update of itself
    (`lambdas/termination_protection/`). Its function may call `cloudformation:UpdateTerminationProtection` on this
    stack and nothing else; removing the construct leaves protection on."""

    def __init__(self, scope: Construct, construct_id: str, *, logs_key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.function = python_function(
            self,
            "Function",
            code=python_code("termination_protection"),
            handler="index.handler",
            timeout=Duration.minutes(1),
            description="Turns on termination protection of this stack (CDK Pipelines does not apply the setting)",
            logs_key=logs_key,
            log_group_id="Logs",
            invoked_by="CloudFormation (custom resource)",
            why_outside_vpc="It calls only CloudFormation's API and its pre-signed response URL, both AWS public "
            "endpoints over TLS; it reaches nothing inside the VPC.",
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ProtectThisStack", actions=["cloudformation:UpdateTerminationProtection"], resources=[stack.stack_id]
            )
        )
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type="Custom::TerminationProtection",
            properties={"Enabled": "true"},
        )
        self.resource.node.add_dependency(self.function)
