"""Read access to another stack's secrets without touching that stack.

CDK's `secret.grant_read(role)` also adds the role to the secret's KMS key policy. When the role lives in a later
stack (Platform) and the key in an earlier one (Data), that is a dependency cycle. Here the secrets are imported by
ARN (so ECS and grants only write identity policies in the consuming stack) and decryption is granted on the
role, through Secrets Manager only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct


@dataclass(frozen=True)
class SecretAccess:
    secrets: Mapping[str, secretsmanager.ISecret]  # keyed by name without the environment prefix
    key: kms.IKey

    @classmethod
    def import_into(cls, scope: Construct, secrets: Mapping[str, secretsmanager.ISecret], key: kms.IKey) -> SecretAccess:
        imported = {
            name: secretsmanager.Secret.from_secret_complete_arn(scope, f"Secret-{name.replace('/', '-')}", secret.secret_arn)
            for name, secret in sorted(secrets.items())
        }
        return cls(imported, key)

    def __getitem__(self, name: str) -> secretsmanager.ISecret:
        return self.secrets[name]

    def grant_read(self, role: iam.IRole, *names: str) -> None:
        """GetSecretValue on exactly these secrets, and kms:Decrypt of their key only via Secrets Manager."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[self.secrets[name].secret_arn for name in names],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[self.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{Stack.of(role).region}.amazonaws.com"}},
            )
        )
