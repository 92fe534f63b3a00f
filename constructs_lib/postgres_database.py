"""The platform's PostgreSQL 16 instance, its master login and its log groups."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from config.model import DatabaseConfig
from constructs_lib.compliance import acknowledge
from constructs_lib.stable_ids import Group

POSTGRES_PORT = 5432
POSTGRES_MASTER_USER = "postgres"
LOG_EXPORTS = ("postgresql", "upgrade")
MASTER_ROTATION = Duration.days(30)


class PostgresDatabase(Group):
    """One RDS PostgreSQL 16 instance (`<qualifier>-postgres`) in the given subnets and security group.

    Defaults:
    - `rds.force_ssl=1`: clients must use TLS. Storage and Performance Insights encrypted with `key`; gp3 with
      storage autoscaling up to the configured ceiling; enhanced monitoring every 60 s; 5432 (the apps expect it).
    - A final snapshot when deleted or replaced; deletion protection as configured.
    - The master login is a secret of its own (`master_secret_name`, RETAIN), rotated every 30 days by the hosted
      single-user rotation in `rotation_subnets`: only the database bootstrap uses it, and it reads it fresh.
    - The log groups RDS exports to are made first, encrypted with `logs_key` and kept a year.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        qualifier: str,
        settings: DatabaseConfig,
        master_secret_name: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        rotation_subnets: ec2.SubnetSelection,
        rotation_security_group: ec2.ISecurityGroup,
        key: kms.IKey,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        engine = rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16)
        # Our own secret rather than Credentials.from_generated_secret: a stable logical id and RETAIN, so the
        # master login survives with the database's final snapshot.
        self.master_secret = rds.DatabaseSecret(
            self,
            "PostgresMasterSecret",
            username=POSTGRES_MASTER_USER,
            secret_name=master_secret_name,
            encryption_key=key,
            exclude_characters=" %+~`#$&*()|[]{}:;<>?!'/@\"\\",
        )
        self.master_secret.apply_removal_policy(RemovalPolicy.RETAIN)
        parameter_group = rds.ParameterGroup(
            self,
            "PostgresParameters",
            engine=engine,
            description=f"{qualifier} PostgreSQL 16: TLS required",
            parameters={"rds.force_ssl": "1"},
        )
        identifier = f"{qualifier}-postgres"
        export_log_groups = [
            logs.LogGroup(
                self,
                f"PostgresLogs{kind.capitalize()}",
                log_group_name=f"/aws/rds/instance/{identifier}/{kind}",
                retention=logs.RetentionDays.ONE_YEAR,
                encryption_key=logs_key,
                removal_policy=RemovalPolicy.RETAIN,
            )
            for kind in LOG_EXPORTS
        ]
        self.instance = rds.DatabaseInstance(
            self,
            "Postgres",
            instance_identifier=identifier,
            engine=engine,
            instance_type=ec2.InstanceType(settings.instance_class),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            port=POSTGRES_PORT,
            credentials=rds.Credentials.from_secret(self.master_secret),
            parameter_group=parameter_group,
            allocated_storage=settings.allocated_storage_gb,
            max_allocated_storage=settings.max_allocated_storage_gb,
            storage_type=rds.StorageType.GP3,
            storage_encrypted=True,
            storage_encryption_key=key,
            multi_az=settings.multi_az,
            backup_retention=Duration.days(settings.backup_retention_days),
            preferred_backup_window="08:00-09:00",
            preferred_maintenance_window="sun:09:30-sun:10:30",
            deletion_protection=settings.deletion_protection,
            enable_performance_insights=True,
            performance_insight_encryption_key=key,
            cloudwatch_logs_exports=list(LOG_EXPORTS),
            monitoring_interval=Duration.seconds(60),  # enhanced monitoring (OS metrics)
            auto_minor_version_upgrade=True,
            copy_tags_to_snapshot=True,
            publicly_accessible=False,
            removal_policy=RemovalPolicy.SNAPSHOT,
        )
        for log_group in export_log_groups:
            self.instance.node.add_dependency(log_group)
        if settings.snapshot_identifier:
            self._restore_from(settings.snapshot_identifier)
        rotation = self.master_secret.add_rotation_schedule(
            "Rotation",
            automatically_after=MASTER_ROTATION,
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                function_name=f"{qualifier}-postgres-master-rotation",
                vpc=vpc,
                vpc_subnets=rotation_subnets,
                security_groups=[rotation_security_group],
            ),
        )
        # Secrets Manager rotates when the schedule is created: only once the instance exists (created or restored)
        # and the secret names it (the attachment), never against an instance still being created.
        attachment = self.master_secret.node.try_find_child("Attachment")
        rotation.node.add_dependency(attachment if attachment is not None else self.instance)
        self.endpoint = self.instance.db_instance_endpoint_address
        self.port = self.instance.db_instance_endpoint_port
        self._acknowledge(environment, settings)

    def _restore_from(self, snapshot: str) -> None:
        """Created from a DB snapshot (taking over the Terraform deployment: `make adopt`). CloudFormation's template
        reference (its resource schema): with DBSnapshotIdentifier, MasterUsername, MasterUserPassword, KmsKeyId,
        DBName and StorageEncrypted are not specified: the snapshot's login, password, key and encryption are kept
        (`make adopt` refuses an unencrypted snapshot). The identifier stays on every later deploy: CloudFormation
        restores nothing again while it is unchanged, and replaces the instance when it changes or goes (the release
        review blocks that). The master secret, imported from Terraform, holds the snapshot's login; its rotation
        changes the password from there."""
        cfn: rds.CfnDBInstance = self.instance.node.default_child  # type: ignore[assignment]
        cfn.add_property_override("DBSnapshotIdentifier", snapshot)
        for name in ("MasterUsername", "MasterUserPassword", "KmsKeyId", "DBName", "StorageEncrypted"):
            cfn.add_property_deletion_override(name)

    def _acknowledge(self, environment: str, settings: DatabaseConfig) -> None:
        reasons = {
            "AwsSolutions-RDS11": "PostgreSQL keeps its standard port: Coder's Terraform, LiteLLM and Langfuse expect "
            "5432; only the platform's security groups may reach it, inside private data subnets.",
        }
        if not settings.multi_az:
            multi_az = (
                f"{environment} is a single-AZ copy of production to keep its cost down (config "
                "database.multi_az = false); production runs Multi-AZ."
            )
            reasons.update({"AwsSolutions-RDS3": multi_az, "RDSMultiAZSupport": multi_az})
        acknowledge(self.instance, reasons)
        acknowledge(
            self.instance.node.find_child("MonitoringRole"),
            {
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]":
                "The AWS-maintained role policy that lets RDS publish OS metrics to CloudWatch Logs, nothing else.",
            },
        )
