"""The environment's application secrets, one row each: name, how its value is made, why it does not rotate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from constructs_lib.compliance import acknowledge
from constructs_lib.formatted_secret import FormattedSecret, GeneratedField, OperatorPlaceholder
from constructs_lib.stable_ids import Group

# One database and one login per application (made by AppDatabases at deploy time).
APP_DATABASES = ("coder", "litellm", "langfuse")
URL_SAFE = {"exclude_punctuation": True, "include_space": False}


@dataclass(frozen=True)
class Generated:
    """A value Secrets Manager generates once: the whole string."""

    length: int


@dataclass(frozen=True)
class DatabaseLogin:
    """`{engine, host, port, dbname, username, password}` for one app; only the password is generated (AppDatabases
    creates the login with it and adds the `url` field the app reads)."""

    app: str


@dataclass(frozen=True)
class Formatted:
    """JSON fields in an application's format (prefix, alphabet, length), made by FormattedSecret."""

    fields: Mapping[str, GeneratedField] = field(default_factory=dict)


@dataclass(frozen=True)
class Operator:
    """A value only a person has (an API key, a client secret): no deploy may ever replace it. The template carries no
    generator; OperatorPlaceholder puts a random placeholder while there is no value, so that consumers start."""

    json_field: str | None = None
    placeholder_length: int = 32


@dataclass(frozen=True)
class SecretRow:
    name: str  # without the environment prefix: `litellm/master-key`
    construct_id: str  # the secret's logical id derives from it: never rename
    value: Generated | DatabaseLogin | Formatted | Operator
    description: str
    no_rotation: str  # why it is not rotated automatically (its cdk-nag acknowledgment)


_APP_LOGIN = (
    "{app} reads its connection URL once, when a task starts: automatic rotation would cut running tasks off "
    "the database. Passwords change on purpose: new password in the secret, AppDatabases re-run, restart (README)."
)
_OPERATOR = "OPERATOR-SUPPLIED: {what} is issued and rotated by its owner outside AWS, then put here (README)."

SECRETS: tuple[SecretRow, ...] = (
    *(
        SecretRow(
            f"{app}/database",
            f"{app.capitalize()}DatabaseSecret",
            DatabaseLogin(app),
            f"PostgreSQL login of {app} (own database, own user; TLS required)",
            _APP_LOGIN.format(app={"coder": "Coder", "litellm": "LiteLLM", "langfuse": "Langfuse"}[app]),
        )
        for app in APP_DATABASES
    ),
    SecretRow(
        "coder/oidc",
        "CoderOidcSecret",
        Operator(json_field="client_secret"),
        "OPERATOR-SUPPLIED: client_secret of the Azure AD app registration (config oidc.client_id) that Coder "
        "and the ALB in front of the admin UI use. The secret is JSON, {\"client_secret\": \"<the app's client "
        "secret>\"} (the stacks read that field); put it with put-secret-value --secret-string. The generated value "
        "is a placeholder.",
        _OPERATOR.format(what="the Azure AD client secret"),
    ),
    SecretRow(
        "authentik/secret-key",
        "AuthentikSecretKey",
        Generated(64),
        "Authentik secret key (64 characters)",
        "Authentik signs sessions and tokens with it: a change logs every user out and invalidates issued tokens, so "
        "it changes by hand in a maintenance window.",
    ),
    SecretRow(
        "litellm/anthropic-api-key",
        "AnthropicApiKeySecret",
        Operator(),
        "OPERATOR-SUPPLIED: Anthropic API key for LiteLLM, as a plain string (not JSON). Replace the generated "
        "placeholder with put-secret-value --secret-string.",
        _OPERATOR.format(what="the Anthropic API key"),
    ),
    SecretRow(
        "custom-llm/api-key",
        "CustomLlmApiKeySecret",
        Operator(),
        "OPERATOR-SUPPLIED: API key of the corporate LLM gateway (custom_llm_api_base) for LiteLLM, as a plain string "
        "(not JSON). Replace the generated placeholder with put-secret-value --secret-string.",
        _OPERATOR.format(what="the corporate LLM gateway's API key"),
    ),
    SecretRow(
        "key-provisioner/secret",
        "KeyProvisionerSecret",
        Generated(48),
        "Key Provisioner shared secret (48 characters)",
        "Shared by the Key Provisioner and its callers, read at start: a change needs a coordinated restart, done by "
        "hand.",
    ),
    SecretRow(
        "langfuse/clickhouse",
        "ClickHousePasswordSecret",
        Generated(32),
        "ClickHouse password of the langfuse user",
        "ClickHouse creates its langfuse user with this password only when its data directory is empty: an automatic "
        "rotation would lock Langfuse out of its traces.",
    ),
    SecretRow(
        "redis/auth-token",  # ElastiCache AUTH token: 16-128 printable characters without @, " or /.
        "RedisAuthTokenSecret",
        Generated(64),
        "ElastiCache Redis AUTH token",
        "The ElastiCache AUTH token changes only through ModifyReplicationGroup (ROTATE, then SET) with consumers "
        "restarted in between: a planned, manual operation.",
    ),
    SecretRow(
        "litellm/master-key",  # LiteLLM refuses master keys that do not start with "sk-".
        "LiteLLMMasterKey",
        # LiteLLM encrypts with the master key when it has no salt key: an imported secret without one keeps that.
        Formatted({"master_key": GeneratedField("sk-", 48), "salt_key": GeneratedField("sk-", 48, seed_from="master_key")}),
        "LiteLLM master key (sk-...) and the salt key that encrypts stored credentials (never rotate)",
        "salt_key encrypts the credentials LiteLLM stores and must never change; master_key is the gateway's admin "
        "key, rotated by hand with the Key Provisioner.",
    ),
    SecretRow(
        "langfuse/api-keys",  # the LiteLLM callback uses them and Langfuse is initialised with them
        "LangfuseApiKeys",
        Formatted({"public_key": GeneratedField("pk-lf-", 32), "secret_key": GeneratedField("sk-lf-", 48)}),
        "Langfuse project API keys used by the LiteLLM callback",
        "The Langfuse project keys the LiteLLM callback uses: made once by Langfuse's headless initialisation, "
        "rotated in Langfuse's UI and then here.",
    ),
    SecretRow(
        "langfuse/owner",  # Langfuse refuses an initial password shorter than 8 characters.
        "LangfuseOwnerSecret",
        Generated(32),
        "Password of Langfuse's first owner (config langfuse.owner_email), made by Langfuse's headless "
        "initialisation; the owner signs in with Azure AD, password sign-in is off (README)",
        "Langfuse sets the owner's password from it once, when it creates the owner, and never reads it again; "
        "password sign-in is off.",
    ),
    SecretRow(
        "langfuse/auth",  # ENCRYPTION_KEY must be exactly 64 hex characters (256 bits).
        "LangfuseAuth",
        Formatted({
            "nextauth_secret": GeneratedField("", 64),
            "salt": GeneratedField("", 64),
            "encryption_key": GeneratedField("", 64, "hex"),
        }),
        "Langfuse NEXTAUTH_SECRET, SALT and ENCRYPTION_KEY",
        "A new SALT or ENCRYPTION_KEY makes every stored Langfuse API key and encrypted value unreadable.",
    ),
)


GATEWAY_SECRET = "custom-llm/api-key"  # noqa: S105 - a secret's name; only where the environment has a gateway


class PlatformSecrets(Group):
    """Every row of SECRETS as a Secrets Manager secret named `secret_name(row.name)`.

    Defaults: encrypted with `key`, RETAIN (apps keep working credentials across stack rebuilds); no value is ever
    in a template: Secrets Manager or a custom resource generates each one in the account.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secret_name: Callable[[str], str],
        database_endpoint: str,
        database_port: str,
        key: kms.IKey,
        logs_key: kms.IKey,
        gateway: bool = True,
    ) -> None:
        """`gateway`: a corporate LLM gateway is configured (without one there is no gateway API key secret)."""
        super().__init__(scope, construct_id)
        self.secrets: dict[str, secretsmanager.ISecret] = {}
        for row in SECRETS:
            if row.name == GATEWAY_SECRET and not gateway:
                continue
            value = row.value
            if isinstance(value, Formatted):
                secret = FormattedSecret(
                    self, row.construct_id, secret_name=secret_name(row.name), description=row.description,
                    fields=dict(value.fields), encryption_key=key, logs_key=logs_key,
                ).secret
            elif isinstance(value, Operator):
                secret = self._operator_supplied(row, value, secret_name(row.name), key, logs_key)
            else:
                generator = (
                    self._login(value, database_endpoint, database_port)
                    if isinstance(value, DatabaseLogin)
                    else self._generated(value)
                )
                secret = secretsmanager.Secret(
                    self,
                    row.construct_id,
                    secret_name=secret_name(row.name),
                    description=row.description,
                    encryption_key=key,
                    generate_secret_string=generator,
                    removal_policy=RemovalPolicy.RETAIN,
                )
            acknowledge(secret, {"AwsSolutions-SMG4": row.no_rotation, "SecretsManagerRotationEnabled": row.no_rotation})
            self.secrets[row.name] = secret

    def __getitem__(self, name: str) -> secretsmanager.ISecret:
        return self.secrets[name]

    def _operator_supplied(
        self, row: SecretRow, value: Operator, name: str, key: kms.IKey, logs_key: kms.IKey
    ) -> secretsmanager.Secret:
        secret = secretsmanager.Secret(
            self, row.construct_id, secret_name=name, description=row.description, encryption_key=key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # CDK's Secret always writes a generator; without one, no template change can make CloudFormation mint a
        # value over the one the operator put.
        cfn: secretsmanager.CfnSecret = secret.node.default_child  # type: ignore[assignment]
        cfn.add_property_deletion_override("GenerateSecretString")
        OperatorPlaceholder(
            self, f"{row.construct_id}Placeholder", secret=secret, json_field=value.json_field,
            length=value.placeholder_length, logs_key=logs_key,
        )
        return secret

    @staticmethod
    def _generated(value: Generated) -> secretsmanager.SecretStringGenerator:
        return secretsmanager.SecretStringGenerator(password_length=value.length, **URL_SAFE)

    def _login(self, value: DatabaseLogin, endpoint: str, port: str) -> secretsmanager.SecretStringGenerator:
        # host/port/dbname/username are plain facts; only the password is generated.
        template = Stack.of(self).to_json_string(
            {"engine": "postgres", "host": endpoint, "port": port, "dbname": value.app, "username": value.app}
        )
        return secretsmanager.SecretStringGenerator(
            secret_string_template=template, generate_string_key="password", password_length=32, **URL_SAFE
        )
