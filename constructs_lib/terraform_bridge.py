"""The CDK -> Terraform bridge: the ids Coder's workspace templates read with `aws_ssm_parameter`."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from constructs_lib.stable_ids import Group


class TerraformBridge(Group):
    """One String parameter per value, named `<ssm_prefix><name>`; `values` is {construct id: (name, value)}."""

    def __init__(
        self, scope: Construct, construct_id: str, *, qualifier: str, ssm_prefix: str, values: Mapping[str, tuple[str, str]]
    ) -> None:
        super().__init__(scope, construct_id)
        self.parameters = {
            name: ssm.StringParameter(
                self,
                f"{parameter_id}Parameter",
                parameter_name=f"{ssm_prefix}{name}",
                string_value=value,
                description=f"{qualifier} {name} for Coder's Terraform workspace templates",
            )
            for parameter_id, (name, value) in values.items()
        }
