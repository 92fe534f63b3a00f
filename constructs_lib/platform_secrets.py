"""The environment's application secrets, one row each: name, how its value is made, why it does not rotate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from constructs_lib.compliance import acknowledge
from constructs_lib.formatted_secret import FormattedSecret, GeneratedField
from constructs_lib.stable_ids import Group

# One database and one login per application (made by AppDatabases at deploy time).
APP_DATABASES = ("coder", "litellm", "langfuse")
URL_SAFE = {"exclude_punctuation": True, "include_space": False}


@dataclass(frozen=True)
class Generated:
    """A value Secrets Manager generates once: the whole string, or one field of a JSON object."""

    length: int | None = None  # None: Secrets Manager's default
    json_field: str | None = None


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
class SecretRow:
    name: str  # without the environment prefix: `litellm/master-key`
    construct_id: str  # the secret's logical id derives from it: never rename
    value: Generated | DatabaseLogin | Formatted
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
        Generated(json_field="client_secret"),
        "OPERATOR-SUPPLIED: client_secret of the Azure AD app registration (config oidc.client_id) that Coder "
        "and the ALB in front of the admin UI use. Set it with put-secret-value; the generated value is a placeholder.",
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
        Generated(32),
        "OPERATOR-SUPPLIED: Anthropic API key for LiteLLM. Replace the generated placeholder with put-secret-value.",
        _OPERATOR.format(what="the Anthropic API key"),
    ),
    SecretRow(
        "custom-llm/api-key",
        "CustomLlmApiKeySecret",
        Generated(32),
        "OPERATOR-SUPPLIED: API key of the corporate LLM gateway (custom_llm_api_base) for LiteLLM. Replace the "
        "generated placeholder with put-secret-value.",
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
        Formatted({"master_key": GeneratedField("sk-", 48), "salt_key": GeneratedField("sk-", 48)}),
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
    ) -> None:
        super().__init__(scope, construct_id)
        self.secrets: dict[str, secretsmanager.ISecret] = {}
        for row in SECRETS:
            value = row.value
            if isinstance(value, Formatted):
                secret = FormattedSecret(
                    self, row.construct_id, secret_name=secret_name(row.name), description=row.description,
                    fields=dict(value.fields), encryption_key=key, logs_key=logs_key,
                ).secret
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

    @staticmethod
    def _generated(value: Generated) -> secretsmanager.SecretStringGenerator:
        shape = (
            {"secret_string_template": "{}", "generate_string_key": value.json_field} if value.json_field else {}
        )
        length = {"password_length": value.length} if value.length else {}
        return secretsmanager.SecretStringGenerator(**shape, **length, **URL_SAFE)

    def _login(self, value: DatabaseLogin, endpoint: str, port: str) -> secretsmanager.SecretStringGenerator:
        # host/port/dbname/username are plain facts; only the password is generated.
        template = Stack.of(self).to_json_string(
            {"engine": "postgres", "host": endpoint, "port": port, "dbname": value.app, "username": value.app}
        )
        return secretsmanager.SecretStringGenerator(
            secret_string_template=template, generate_string_key="password", password_length=32, **URL_SAFE
        )
