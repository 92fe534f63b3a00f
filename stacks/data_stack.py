"""DataStack: every stateful resource of an environment (RDS, Redis, EFS, S3, DynamoDB, Secrets Manager)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import CfnDeletionPolicy, Duration, RemovalPolicy, Stack
from aws_cdk import aws_backup as backup
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_events as events
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.app_databases import AppDatabases
from constructs_lib.compliance import acknowledge
from constructs_lib.formatted_secret import FormattedSecret, GeneratedField
from constructs_lib.secure_bucket import SecureBucket
from stacks.network_stack import POSTGRES_PORT, REDIS_PORT, S3_ACCESS_LOGS_PREFIX, NetworkStackOutputs

POSTGRES_MASTER_USER = "postgres"
REDIS_ENGINE_VERSION = "7.1"
# One database and one login per application (made by AppDatabases at deploy time).
APP_DATABASES = ("coder", "litellm", "langfuse")
POSTGRES_LOG_EXPORTS = ("postgresql", "upgrade")
BACKUP_RETENTION = Duration.days(35)
# Bucket name suffixes (names are `{project}-{env}-<suffix>-<account>-<region>`, EnvironmentConfig.global_name).
BUCKET_SUFFIXES = {
    "terraform_state": "terraform-state",
    "backups": "backups",
    "artifacts": "artifacts",
    "langfuse_events": "langfuse-events",
    "langfuse_media": "langfuse-media",
}
LOCK_TABLE_SUFFIX = "terraform-locks"

_APP_LOGIN = (
    "{app} reads its connection URL once, when a task starts: automatic rotation would cut running tasks off "
    "the database. Passwords change on purpose: new password in the secret, AppDatabases re-run, restart (README)."
)
_OPERATOR = "OPERATOR-SUPPLIED: {what} is issued and rotated by its owner outside AWS, then put here (README)."
# Why each secret other than the RDS master login (rotated every 30 days) does not rotate automatically.
ROTATION_REASONS = {
    "coder/database": _APP_LOGIN.format(app="Coder"),
    "litellm/database": _APP_LOGIN.format(app="LiteLLM"),
    "langfuse/database": _APP_LOGIN.format(app="Langfuse"),
    "coder/oidc": _OPERATOR.format(what="the Azure AD client secret"),
    "litellm/anthropic-api-key": _OPERATOR.format(what="the Anthropic API key"),
    "custom-llm/api-key": _OPERATOR.format(what="the corporate LLM gateway's API key"),
    "authentik/secret-key": "Authentik signs sessions and tokens with it: a change logs every user out and "
    "invalidates issued tokens, so it changes by hand in a maintenance window.",
    "key-provisioner/secret": "Shared by the Key Provisioner and its callers, read at start: a change needs a "
    "coordinated restart, done by hand.",
    "langfuse/clickhouse": "ClickHouse creates its langfuse user with this password only when its data directory is "
    "empty: an automatic rotation would lock Langfuse out of its traces.",
    "redis/auth-token": "The ElastiCache AUTH token changes only through ModifyReplicationGroup (ROTATE, then SET) "
    "with consumers restarted in between: a planned, manual operation.",
    "litellm/master-key": "salt_key encrypts the credentials LiteLLM stores and must never change; master_key is the "
    "gateway's admin key, rotated by hand with the Key Provisioner.",
    "langfuse/api-keys": "The Langfuse project keys the LiteLLM callback uses: made once by Langfuse's headless "
    "initialisation, rotated in Langfuse's UI and then here.",
    "langfuse/auth": "A new SALT or ENCRYPTION_KEY makes every stored Langfuse API key and encrypted value unreadable.",
}


@dataclass(frozen=True)
class DatabaseOutputs:
    instance: rds.IDatabaseInstance
    master_secret: secretsmanager.ISecret
    endpoint: str
    port: str


@dataclass(frozen=True)
class RedisOutputs:
    endpoint: str
    port: str
    auth_token: secretsmanager.ISecret


@dataclass(frozen=True)
class Buckets:
    terraform_state: s3.IBucket
    backups: s3.IBucket
    artifacts: s3.IBucket
    langfuse_events: s3.IBucket
    langfuse_media: s3.IBucket


@dataclass(frozen=True)
class DataStackOutputs:
    database: DatabaseOutputs
    redis: RedisOutputs
    file_system: efs.IFileSystem
    buckets: Buckets
    lock_table: dynamodb.ITable
    secrets: Mapping[str, secretsmanager.ISecret]  # keyed by name without the environment prefix
    data_key: kms.IKey


class DataStack(Stack):
    """Stateful layer. Everything here survives stack deletion and replacement.

    Non-obvious defaults:
    - One customer-managed KMS key (rotated yearly) encrypts RDS storage and Performance Insights, Redis, EFS and
      all secrets; S3 buckets use SSE-S3 with bucket keys, as the seed plan asks.
    - RDS and Redis take a final snapshot when deleted or replaced; every other resource is retained.
    - Physical names derive from `{project}-{environment}`; S3 names add account and region.
    - Secrets are named `<prefix>/...` (`prod/...` in production, `staging/...` in staging); none of their values
      is in the template: database passwords and keys are generated by Secrets Manager or a custom resource.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStackOutputs,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, termination_protection=config.is_production, **kwargs)
        self._config = config
        self._network = network
        self.data_key = kms.Key(
            self,
            "DataKey",
            alias=f"alias/{config.qualifier}-data",
            description=f"Encrypts {config.qualifier} data at rest (RDS, Redis, EFS, secrets)",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

        database = self._database(network)
        secrets = self._secrets(database)
        self.app_databases = AppDatabases(
            self,
            "AppDatabases",
            instance=database.instance,
            master_secret=database.master_secret,
            app_secrets={app: secrets[f"{app}/database"] for app in APP_DATABASES},
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.security_groups.db_bootstrap,
            encryption_key=self.data_key,
            logs_key=network.logs_key,
        )
        redis_outputs = self._redis(network, secrets["redis/auth-token"])
        file_system = self._file_system(network)
        buckets = self._buckets(network)
        lock_table = dynamodb.Table(
            self,
            "TerraformLockTable",
            table_name=f"{config.qualifier}-{LOCK_TABLE_SUFFIX}",
            partition_key=dynamodb.Attribute(name="LockID", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.RETAIN,
        )

        self._backup_plan(database, file_system, lock_table)
        self.outputs = DataStackOutputs(
            database=database,
            redis=redis_outputs,
            file_system=file_system,
            buckets=buckets,
            lock_table=lock_table,
            secrets=secrets,
            data_key=self.data_key,
        )

    def _name(self, short_name: str) -> str:
        return f"{self._config.secret_prefix}/{short_name}"

    def _database(self, network: NetworkStackOutputs) -> DatabaseOutputs:
        config = self._config
        engine = rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16)
        # Our own secret rather than Credentials.from_generated_secret: a stable logical id and RETAIN, so the
        # master login survives with the database's final snapshot.
        master_secret = rds.DatabaseSecret(
            self,
            "PostgresMasterSecret",
            username=POSTGRES_MASTER_USER,
            secret_name=self._name("rds/master"),
            encryption_key=self.data_key,
            exclude_characters=" %+~`#$&*()|[]{}:;<>?!'/@\"\\",
        )
        master_secret.apply_removal_policy(RemovalPolicy.RETAIN)
        parameter_group = rds.ParameterGroup(
            self,
            "PostgresParameters",
            engine=engine,
            description=f"{config.qualifier} PostgreSQL 16: TLS required",
            parameters={"rds.force_ssl": "1"},
        )
        identifier = f"{config.qualifier}-postgres"
        # The log groups RDS exports to, made here first: encrypted with the logs key and kept one year.
        export_log_groups = [
            logs.LogGroup(
                self,
                f"PostgresLogs{kind.capitalize()}",
                log_group_name=f"/aws/rds/instance/{identifier}/{kind}",
                retention=logs.RetentionDays.ONE_YEAR,
                encryption_key=network.logs_key,
                removal_policy=RemovalPolicy.RETAIN,
            )
            for kind in POSTGRES_LOG_EXPORTS
        ]
        instance = rds.DatabaseInstance(
            self,
            "Postgres",
            instance_identifier=identifier,
            engine=engine,
            instance_type=ec2.InstanceType(config.database.instance_class),
            vpc=network.vpc,
            vpc_subnets=network.data_subnets,
            security_groups=[network.security_groups.rds],
            port=POSTGRES_PORT,
            credentials=rds.Credentials.from_secret(master_secret),
            parameter_group=parameter_group,
            allocated_storage=config.database.allocated_storage_gb,
            max_allocated_storage=config.database.max_allocated_storage_gb,
            storage_type=rds.StorageType.GP3,
            storage_encrypted=True,
            storage_encryption_key=self.data_key,
            multi_az=config.database.multi_az,
            backup_retention=Duration.days(config.database.backup_retention_days),
            preferred_backup_window="08:00-09:00",
            preferred_maintenance_window="sun:09:30-sun:10:30",
            deletion_protection=config.database.deletion_protection,
            enable_performance_insights=True,
            performance_insight_encryption_key=self.data_key,
            cloudwatch_logs_exports=list(POSTGRES_LOG_EXPORTS),
            monitoring_interval=Duration.seconds(60),  # enhanced monitoring (OS metrics)
            auto_minor_version_upgrade=True,
            copy_tags_to_snapshot=True,
            publicly_accessible=False,
            removal_policy=RemovalPolicy.SNAPSHOT,
        )
        for log_group in export_log_groups:
            instance.node.add_dependency(log_group)
        # The master login is used only by AppDatabases at deploy time, which reads it fresh: it can rotate.
        master_secret.add_rotation_schedule(
            "Rotation",
            automatically_after=Duration.days(30),
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                function_name=f"{config.qualifier}-postgres-master-rotation",
                vpc=network.vpc,
                vpc_subnets=network.app_subnets,
                security_groups=[network.security_groups.db_bootstrap],
            ),
        )
        reasons = {
            "AwsSolutions-RDS11": "PostgreSQL keeps its standard port: Coder's Terraform, LiteLLM and Langfuse expect "
            "5432; only the platform's security groups may reach it, inside private data subnets.",
        }
        if not config.database.multi_az:
            multi_az = (
                f"{config.name.value} is a single-AZ copy of production to keep its cost down (config "
                "database.multi_az = false); production runs Multi-AZ."
            )
            reasons.update({"AwsSolutions-RDS3": multi_az, "RDSMultiAZSupport": multi_az})
        acknowledge(instance, reasons)
        acknowledge(
            instance.node.find_child("MonitoringRole"),
            {
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]":
                "The AWS-maintained role policy that lets RDS publish OS metrics to CloudWatch Logs, nothing else.",
            },
        )
        return DatabaseOutputs(
            instance=instance,
            master_secret=master_secret,
            endpoint=instance.db_instance_endpoint_address,
            port=instance.db_instance_endpoint_port,
        )

    def _backup_plan(
        self, database: DatabaseOutputs, file_system: efs.IFileSystem, lock_table: dynamodb.ITable
    ) -> backup.BackupPlan:
        """AWS Backup of the database, the file system and the lock table: daily, kept 35 days, in a vault
        encrypted with the data key (on top of RDS's own automated backups)."""
        vault = backup.BackupVault(
            self,
            "BackupVault",
            backup_vault_name=f"{self._config.qualifier}-backups",
            encryption_key=self.data_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        plan = backup.BackupPlan(
            self,
            "BackupPlan",
            backup_plan_name=f"{self._config.qualifier}-daily",
            backup_vault=vault,
            backup_plan_rules=[
                backup.BackupPlanRule(
                    rule_name="Daily",
                    schedule_expression=events.Schedule.cron(hour="5", minute="0"),
                    delete_after=BACKUP_RETENTION,
                )
            ],
        )
        selection = plan.add_selection(
            "Stateful",
            resources=[
                backup.BackupResource.from_rds_database_instance(database.instance),
                backup.BackupResource.from_efs_file_system(file_system),
                backup.BackupResource.from_dynamo_db_table(lock_table),
            ],
        )
        policies = ("AWSBackupServiceRolePolicyForBackup", "AWSBackupServiceRolePolicyForRestores")
        acknowledge(
            selection,
            {
                f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/{name}]": "The "
                "AWS-maintained policy AWS Backup needs to snapshot and restore the selected resources."
                for name in policies
            },
        )
        return plan

    def _generated_secret(
        self, construct_id: str, short_name: str, description: str, **generate: object
    ) -> secretsmanager.Secret:
        return secretsmanager.Secret(
            self,
            construct_id,
            secret_name=self._name(short_name),
            description=description,
            encryption_key=self.data_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(**generate),
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _secrets(self, database: DatabaseOutputs) -> dict[str, secretsmanager.ISecret]:
        secrets: dict[str, secretsmanager.ISecret] = {}
        url_safe = {"exclude_punctuation": True, "include_space": False}

        for app in APP_DATABASES:
            # host/port/dbname/username are plain facts; only the password is generated. AppDatabases creates the
            # login with this password and adds the `url` field (sslmode=require) that the app reads.
            template = Stack.of(self).to_json_string(
                {
                    "engine": "postgres",
                    "host": database.endpoint,
                    "port": database.port,
                    "dbname": app,
                    "username": app,
                }
            )
            secrets[f"{app}/database"] = self._generated_secret(
                f"{app.capitalize()}DatabaseSecret",
                f"{app}/database",
                f"PostgreSQL login of {app} (own database, own user; TLS required)",
                secret_string_template=template,
                generate_string_key="password",
                password_length=32,
                **url_safe,
            )

        secrets["coder/oidc"] = self._generated_secret(
            "CoderOidcSecret",
            "coder/oidc",
            "OPERATOR-SUPPLIED: client_secret of the Azure AD app registration (config oidc.client_id) that Coder "
            "and the ALB in front of the admin UI use. Set it with put-secret-value; the generated value is a "
            "placeholder.",
            secret_string_template="{}",  # noqa: S106 - an empty JSON object, not a password
            generate_string_key="client_secret",
            **url_safe,
        )
        secrets["authentik/secret-key"] = self._generated_secret(
            "AuthentikSecretKey", "authentik/secret-key", "Authentik secret key (64 characters)",
            password_length=64, **url_safe,
        )
        secrets["litellm/anthropic-api-key"] = self._generated_secret(
            "AnthropicApiKeySecret",
            "litellm/anthropic-api-key",
            "OPERATOR-SUPPLIED: Anthropic API key for LiteLLM. Replace the generated placeholder with "
            "put-secret-value.",
            password_length=32,
            **url_safe,
        )
        secrets["custom-llm/api-key"] = self._generated_secret(
            "CustomLlmApiKeySecret",
            "custom-llm/api-key",
            "OPERATOR-SUPPLIED: API key of the corporate LLM gateway (custom_llm_api_base) for LiteLLM. Replace the "
            "generated placeholder with put-secret-value.",
            password_length=32,
            **url_safe,
        )
        secrets["key-provisioner/secret"] = self._generated_secret(
            "KeyProvisionerSecret", "key-provisioner/secret", "Key Provisioner shared secret (48 characters)",
            password_length=48, **url_safe,
        )
        secrets["langfuse/clickhouse"] = self._generated_secret(
            "ClickHousePasswordSecret", "langfuse/clickhouse", "ClickHouse password of the langfuse user",
            password_length=32, **url_safe,
        )
        # ElastiCache AUTH token: 16-128 printable characters without @, " or /.
        secrets["redis/auth-token"] = self._generated_secret(
            "RedisAuthTokenSecret", "redis/auth-token", "ElastiCache Redis AUTH token", password_length=64, **url_safe
        )

        formatted = {
            # LiteLLM refuses master keys that do not start with "sk-".
            "litellm/master-key": (
                "LiteLLMMasterKey",
                "LiteLLM master key (sk-...) and the salt key that encrypts stored credentials (never rotate)",
                {"master_key": GeneratedField("sk-", 48), "salt_key": GeneratedField("sk-", 48)},
            ),
            # Langfuse project keys: the LiteLLM callback uses them and Langfuse is initialised with them.
            "langfuse/api-keys": (
                "LangfuseApiKeys",
                "Langfuse project API keys used by the LiteLLM callback",
                {"public_key": GeneratedField("pk-lf-", 32), "secret_key": GeneratedField("sk-lf-", 48)},
            ),
            # ENCRYPTION_KEY must be exactly 64 hex characters (256 bits).
            "langfuse/auth": (
                "LangfuseAuth",
                "Langfuse NEXTAUTH_SECRET, SALT and ENCRYPTION_KEY",
                {
                    "nextauth_secret": GeneratedField("", 64),
                    "salt": GeneratedField("", 64),
                    "encryption_key": GeneratedField("", 64, "hex"),
                },
            ),
        }
        for short_name, (construct_id, description, fields) in formatted.items():
            secrets[short_name] = FormattedSecret(
                self,
                construct_id,
                secret_name=self._name(short_name),
                description=description,
                fields=fields,
                encryption_key=self.data_key,
                logs_key=self._network.logs_key,
            ).secret
        for name, secret in secrets.items():
            reason = ROTATION_REASONS[name]
            acknowledge(secret, {"AwsSolutions-SMG4": reason, "SecretsManagerRotationEnabled": reason})
        return secrets

    def _redis(self, network: NetworkStackOutputs, auth_token: secretsmanager.ISecret) -> RedisOutputs:
        config = self._config
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "RedisSubnetGroup",
            description=f"{config.qualifier} Redis: private data subnets",
            subnet_ids=network.vpc.select_subnets(subnet_group_name=network.data_subnets.subnet_group_name).subnet_ids,
        )
        # Langfuse keeps its queues in Redis: evicting keys would lose events.
        parameter_group = elasticache.CfnParameterGroup(
            self,
            "RedisParameters",
            cache_parameter_group_family="redis7",
            description=f"{config.qualifier} Redis 7: noeviction (Langfuse queues)",
            properties={"maxmemory-policy": "noeviction"},
        )
        group = elasticache.CfnReplicationGroup(
            self,
            "Redis",
            replication_group_description=f"{config.qualifier} Redis (LiteLLM cache, Langfuse queues)",
            engine="redis",
            engine_version=REDIS_ENGINE_VERSION,
            cache_node_type=config.redis.node_type,
            num_cache_clusters=2,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            at_rest_encryption_enabled=True,
            kms_key_id=self.data_key.key_arn,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=auth_token.secret_value.unsafe_unwrap(),  # a dynamic reference, resolved by CloudFormation
            port=REDIS_PORT,
            cache_subnet_group_name=subnet_group.ref,
            cache_parameter_group_name=parameter_group.ref,
            security_group_ids=[network.security_groups.redis.security_group_id],
            preferred_maintenance_window="sun:04:30-sun:05:30",
            snapshot_window="03:00-04:00",
            snapshot_retention_limit=config.redis.snapshot_retention_days,
            auto_minor_version_upgrade=True,
        )
        acknowledge(
            group,
            {
                "AwsSolutions-AEC5": "Redis keeps its standard port: only the platform's security groups reach it, "
                "inside private data subnets, with TLS and an AUTH token.",
                "ElastiCacheRedisClusterAutomaticBackup": "Redis holds LiteLLM's cache and Langfuse's in-flight queues, "
                f"not a system of record: {config.redis.snapshot_retention_days} day(s) of snapshots (config) restore "
                "a recent state; durable data is in PostgreSQL, ClickHouse and S3.",
            },
        )
        group.cfn_options.deletion_policy = CfnDeletionPolicy.SNAPSHOT
        group.cfn_options.update_replace_policy = CfnDeletionPolicy.SNAPSHOT
        return RedisOutputs(
            endpoint=group.attr_primary_end_point_address,
            port=group.attr_primary_end_point_port,
            auth_token=auth_token,
        )

    def _file_system(self, network: NetworkStackOutputs) -> efs.FileSystem:
        return efs.FileSystem(
            self,
            "FileSystem",
            vpc=network.vpc,
            vpc_subnets=network.app_subnets,
            security_group=network.security_groups.efs,
            encrypted=True,
            kms_key=self.data_key,
            performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
            throughput_mode=efs.ThroughputMode.BURSTING,
            lifecycle_policy=efs.LifecyclePolicy.AFTER_30_DAYS,
            enable_automatic_backups=False,  # the stack's AWS Backup plan covers it
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _buckets(self, network: NetworkStackOutputs) -> Buckets:
        def bucket(construct_id: str, suffix: str, versioned: bool, noncurrent_days: int | None = None) -> s3.IBucket:
            made = SecureBucket(
                self,
                construct_id,
                bucket_name=self._config.global_name(suffix),
                versioned=versioned,
                noncurrent_version_expiration=Duration.days(noncurrent_days) if noncurrent_days else None,
                encryption_key=self.data_key,
                access_logs=(network.access_logs_bucket.bucket_name, S3_ACCESS_LOGS_PREFIX),
            )
            reasons = {
                "S3BucketReplicationEnabled": "Single-region platform by design: S3 keeps objects durable in the "
                "region; cross-region disaster recovery is not part of this deployment.",
            }
            if not versioned:
                reasons["S3BucketVersioningEnabled"] = (
                    "Langfuse's event and media objects are deleted on purpose (retention and deletion requests); "
                    "versioning would keep deleted trace data."
                )
            acknowledge(made, reasons)
            return made.bucket

        suffix = BUCKET_SUFFIXES
        return Buckets(
            terraform_state=bucket("TerraformStateBucket", suffix["terraform_state"], versioned=True),
            backups=bucket("BackupsBucket", suffix["backups"], versioned=True, noncurrent_days=90),
            artifacts=bucket("ArtifactsBucket", suffix["artifacts"], versioned=True),
            langfuse_events=bucket("LangfuseEventsBucket", suffix["langfuse_events"], versioned=False),
            langfuse_media=bucket("LangfuseMediaBucket", suffix["langfuse_media"], versioned=False),
        )

