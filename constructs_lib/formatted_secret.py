"""Secrets whose generated values must follow an application's format (prefix, alphabet, length)."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from constructs_lib.python_lambda import python_code, python_function


@dataclass(frozen=True)
class GeneratedField:
    """One JSON field: ``prefix`` + ``length`` random characters from ``alphabet`` ("alnum" or "hex")."""

    prefix: str
    length: int
    alphabet: str = "alnum"
    # In a secret someone made earlier (imported from the Terraform deployment) that lacks this field: take that
    # field's value instead of a new one (the app's own fallback when this one is not set).
    seed_from: str | None = None

    def as_property(self) -> dict:
        return {"Prefix": self.prefix, "Length": self.length, "Alphabet": self.alphabet,
                **({"SeedFrom": self.seed_from} if self.seed_from else {})}


class FormattedSecret(Construct):
    """A Secrets Manager secret holding JSON fields generated once, at deploy time, in a given format.

    Defaults:
    - Encrypted with the given KMS key; RETAIN on deletion (apps keep working keys across stack rebuilds).
    - Values are generated inside the account by a custom resource; they never appear in a template or a log.
    - A field that already has a valid value is never replaced, so updates and re-deploys keep it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secret_name: str,
        description: str,
        fields: dict[str, GeneratedField],
        encryption_key: kms.IKey,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret = secretsmanager.Secret(
            self,
            "Secret",
            secret_name=secret_name,
            description=description,
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        provider = _initializer_function(Stack.of(self), logs_key)
        self.secret.grant_read(provider)
        self.secret.grant_write(provider)
        self.initializer = CustomResource(
            self,
            "Initializer",
            service_token=provider.function_arn,
            resource_type="Custom::SecretFields",
            properties={
                "SecretId": self.secret.secret_arn,
                "Fields": {name: field.as_property() for name, field in fields.items()},
            },
        )
        # The handler's role policy (granted above) must exist before the handler runs.
        self.initializer.node.add_dependency(provider)


class OperatorPlaceholder(Construct):
    """A random placeholder in an operator-supplied secret that has no value yet (or lacks `json_field`), put once
    at deploy time by the shared initializer; a value someone put there is never changed. The secret itself must
    carry no GenerateSecretString: CloudFormation would mint a new value over the operator's whenever it changed."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secret: secretsmanager.ISecret,
        json_field: str | None,
        length: int,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        provider = _initializer_function(Stack.of(self), logs_key)
        secret.grant_read(provider)
        secret.grant_write(provider)
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=provider.function_arn,
            resource_type="Custom::SecretFields",
            properties={"SecretId": secret.secret_arn, "Placeholder": {"Field": json_field or "", "Length": length}},
        )
        self.resource.node.add_dependency(provider)


def _initializer_function(stack: Stack, logs_key: kms.IKey) -> lambda_.Function:
    """One handler per stack, shared by every FormattedSecret in it."""
    existing = stack.node.try_find_child("SecretFieldsInitializer")
    if existing is not None:
        return existing  # type: ignore[return-value]
    return python_function(
        stack,
        "SecretFieldsInitializer",
        code=python_code("secret_fields"),
        handler="index.handler",
        timeout=Duration.minutes(1),
        description="Fills formatted secret fields once and operator-supplied secrets' placeholders, never replacing a value",
        logs_key=logs_key,
        log_group_id="SecretFieldsInitializerLogs",
        invoked_by="CloudFormation (custom resource)",
        why_outside_vpc="It talks only to Secrets Manager and to CloudFormation's pre-signed response URL, both "
        "AWS public endpoints over TLS; it reaches nothing inside the VPC.",
    )
