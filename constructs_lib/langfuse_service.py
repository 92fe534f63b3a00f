"""Langfuse web and worker: LLM tracing (LiteLLM sends every call there)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.clickhouse_service import CLICKHOUSE_DATABASE, CLICKHOUSE_USER
from constructs_lib.fargate_service import FargateService, Listener, ServiceRuntime, ServiceSpec, http_health_check
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import CLICKHOUSE, LANGFUSE_WEB, LANGFUSE_WEB_REPLICAS, LANGFUSE_WORKER
from constructs_lib.timeouts import TARGET_KEEP_ALIVE_SECONDS

EVENTS_PREFIX = "events/"
MEDIA_PREFIX = "media/"


def langfuse_environment(
    config: EnvironmentConfig,
    namespace: str,
    redis_endpoint: str,
    redis_port: str,
    events_bucket: s3.IBucket,
    media_bucket: s3.IBucket,
) -> dict[str, str]:
    """The configuration web and worker both read (Langfuse 4.4.0: worker/src/env.ts, packages/shared/src/env.ts)."""
    return {
        "NODE_ENV": "production",
        "HOSTNAME": "0.0.0.0",  # noqa: S104 - listen on the task's interface; the security group limits who connects
        "NEXTAUTH_URL": f"https://{LANGFUSE_WEB.routes[0].host_name(config.domain)}",  # the worker's links to web
        "CLICKHOUSE_URL": CLICKHOUSE.url(namespace),
        "CLICKHOUSE_USER": CLICKHOUSE_USER,
        "CLICKHOUSE_DB": CLICKHOUSE_DATABASE,
        "CLICKHOUSE_CLUSTER_ENABLED": "false",  # a single ClickHouse server: no ON CLUSTER statements
        "REDIS_HOST": redis_endpoint,
        "REDIS_PORT": redis_port,
        "REDIS_TLS_ENABLED": "true",  # ElastiCache requires TLS in transit
        "LANGFUSE_S3_EVENT_UPLOAD_BUCKET": events_bucket.bucket_name,
        "LANGFUSE_S3_EVENT_UPLOAD_REGION": config.region,
        "LANGFUSE_S3_EVENT_UPLOAD_PREFIX": EVENTS_PREFIX,
        "LANGFUSE_S3_MEDIA_UPLOAD_BUCKET": media_bucket.bucket_name,
        "LANGFUSE_S3_MEDIA_UPLOAD_REGION": config.region,
        "LANGFUSE_S3_MEDIA_UPLOAD_PREFIX": MEDIA_PREFIX,
    }


def langfuse_web_environment(config: EnvironmentConfig, namespace: str) -> dict[str, str]:
    """What only web reads (Langfuse 4.4.0: web/src/env.mjs, web/entrypoint.sh, the Next.js standalone server)."""
    return {
        # Next.js' standalone server reads only this (milliseconds; the image's --keepAliveTimeout flag is ignored):
        # idle connections outlive the ALB's (constructs_lib/timeouts.py), or the ALB reuses closed ones (502s).
        "KEEP_ALIVE_TIMEOUT": str(TARGET_KEEP_ALIVE_SECONDS * 1000),
        "TELEMETRY_ENABLED": "false",
        # The entrypoint's ClickHouse migrations (golang-migrate over the native protocol).
        "CLICKHOUSE_MIGRATION_URL": f"clickhouse://{CLICKHOUSE.name}.{namespace}:{CLICKHOUSE.extra_ports['native']}",
        # Headless initialisation: the organisation and project LiteLLM traces into, with the project keys of
        # `<prefix>/langfuse/api-keys`, the same keys LiteLLM's callback uses.
        "LANGFUSE_INIT_ORG_ID": config.project,
        "LANGFUSE_INIT_ORG_NAME": config.project,
        "LANGFUSE_INIT_PROJECT_ID": f"{config.project}-gateway",
        "LANGFUSE_INIT_PROJECT_NAME": "LiteLLM gateway",
        **langfuse_sign_in(config),
    }


def langfuse_sign_in(config: EnvironmentConfig) -> dict[str, str]:
    """Web only (the worker serves no one): people sign in with the company's Azure AD tenant, the app Coder uses
    (redirect URI https://langfuse.<domain>/api/auth/callback/azure-ad), and with nothing else. A new person belongs
    to no organisation until the owner adds them: the gateway's traces hold every colleague's prompts.

    Langfuse 4.4.0 (web/src/server/auth.ts, web/src/initialize.ts): the Azure AD provider exists only when client id,
    secret and tenant are set; AUTH_DISABLE_USERNAME_PASSWORD turns off password sign-in and sign-up
    (AUTH_DISABLE_SIGNUP would also refuse every new Azure AD user, invited or not); the OWNER membership is made
    only with LANGFUSE_INIT_USER_EMAIL and _PASSWORD. The owner is made with a password nobody can use, then signs
    in with Azure AD under the same e-mail: that links the accounts (ALLOW_ACCOUNT_LINKING, matching the e-mail of
    this tenant's users only)."""
    return {
        "AUTH_AZURE_AD_CLIENT_ID": config.oidc.client_id,
        "AUTH_AZURE_AD_TENANT_ID": config.oidc.tenant_id,
        "AUTH_AZURE_AD_ALLOW_ACCOUNT_LINKING": "true",
        "AUTH_DISABLE_USERNAME_PASSWORD": "true",
        "LANGFUSE_INIT_USER_EMAIL": config.langfuse.owner_email,
        "LANGFUSE_INIT_USER_NAME": "Langfuse owner",
    }


# Only the first web task migrates PostgreSQL and ClickHouse: two runs at once, or one cut short, leave ClickHouse
# "dirty" and every container crash-looping (langfuse/langfuse 6639, 4975).
MIGRATIONS_OFF = {"LANGFUSE_AUTO_POSTGRES_MIGRATION_DISABLED": "true", "LANGFUSE_AUTO_CLICKHOUSE_MIGRATION_DISABLED": "true"}


def langfuse_secrets(secrets: SecretAccess) -> dict[str, ecs.Secret]:
    """The secrets web and worker both read (the worker needs SALT and ENCRYPTION_KEY for API keys and the integrations'
    stored credentials)."""
    def field(name: str, json_field: str | None = None) -> ecs.Secret:
        return ecs.Secret.from_secrets_manager(secrets[name], json_field)

    return {
        "DATABASE_URL": field("langfuse/database", "url"),
        "CLICKHOUSE_PASSWORD": field("langfuse/clickhouse"),
        "REDIS_AUTH": field("redis/auth-token"),
        "SALT": field("langfuse/auth", "salt"),
        "ENCRYPTION_KEY": field("langfuse/auth", "encryption_key"),
    }


def langfuse_web_secrets(secrets: SecretAccess) -> dict[str, ecs.Secret]:
    """Web only: its session secret, the initial project's keys, the Azure AD app's client secret (operator-supplied,
    shared with Coder) and the owner's password."""
    return {
        "NEXTAUTH_SECRET": ecs.Secret.from_secrets_manager(secrets["langfuse/auth"], "nextauth_secret"),
        "LANGFUSE_INIT_PROJECT_PUBLIC_KEY": ecs.Secret.from_secrets_manager(secrets["langfuse/api-keys"], "public_key"),
        "LANGFUSE_INIT_PROJECT_SECRET_KEY": ecs.Secret.from_secrets_manager(secrets["langfuse/api-keys"], "secret_key"),
        "AUTH_AZURE_AD_CLIENT_SECRET": ecs.Secret.from_secrets_manager(secrets["coder/oidc"], "client_secret"),
        "LANGFUSE_INIT_USER_PASSWORD": ecs.Secret.from_secrets_manager(secrets["langfuse/owner"]),
    }


class LangfuseServices(Construct):
    """Langfuse web behind the ALB on its catalogue route, and the worker (its health checked inside the container,
    no ALB), same image version; each gets the settings it reads, nothing more.

    Exactly one container runs the database migrations: the first web task (`langfuse-web`), on regular Fargate (a
    Spot interruption mid-migration would leave ClickHouse dirty), replaced stop-then-start so that two never
    migrate at once. More web tasks (`langfuse-web-replicas`) join its target group with migrations off and deploy
    after it; the worker never migrates. Web's health-check grace period is 5 minutes (migrations run at start).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        listener: elbv2.IApplicationListener,
        task_role: iam.IRole,
        secrets: SecretAccess,
        environment: dict[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        container_secrets = langfuse_secrets(secrets)
        web_environment = {**environment, **langfuse_web_environment(config, runtime.namespace.namespace_name)}
        web_secrets = {**container_secrets, **langfuse_web_secrets(secrets)}
        web_count = config.services.langfuse_web_desired_count
        worker_count = config.services.langfuse_worker_desired_count
        web_size, worker_size = config.tasks.langfuse_web, config.tasks.langfuse_worker

        def web_spec(service, count: int, extra: dict[str, str], **options) -> ServiceSpec:
            return ServiceSpec(
                service=service,
                image=config.images.langfuse,
                cpu=web_size.cpu,
                memory_mib=web_size.memory_mib,
                desired_count=count,
                environment={**web_environment, "PORT": str(LANGFUSE_WEB.port), **extra},
                secrets=web_secrets,
                health_check_grace=Duration.seconds(300),
                **options,
            )

        self.web = FargateService(
            self,
            "Web",
            runtime=runtime,
            spec=web_spec(LANGFUSE_WEB, 1, {}, stateless=False, min_healthy_percent=0, max_healthy_percent=100),
            task_role=task_role,
            listener=Listener(listener, config.domain),
        )
        self.web_replicas: FargateService | None = None
        if web_count > 1:
            self.web_replicas = FargateService(
                self,
                "WebReplicas",
                runtime=runtime,
                spec=web_spec(LANGFUSE_WEB_REPLICAS, web_count - 1, MIGRATIONS_OFF, use_spot=web_count - 1 >= 2),
                task_role=task_role,
                target_group=self.web.target_group,
                target_group_alarms=self.web.deployment_alarm_names,
            )
            self.web_replicas.node.add_dependency(self.web)  # new versions start once the migrating task is healthy
        self.worker = FargateService(
            self,
            "Worker",
            runtime=runtime,
            spec=ServiceSpec(
                service=LANGFUSE_WORKER,
                image=config.images.langfuse_worker,
                cpu=worker_size.cpu,
                memory_mib=worker_size.memory_mib,
                desired_count=worker_count,
                environment={**environment, "PORT": str(LANGFUSE_WORKER.port)},
                secrets=container_secrets,
                use_spot=worker_count >= 2,
                container_health_check=http_health_check(LANGFUSE_WORKER.local_url(), start_period=Duration.seconds(120)),
            ),
            task_role=task_role,
        )
