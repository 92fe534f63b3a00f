"""ElastiCache Redis 7: LiteLLM's cache and Langfuse's queues."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import CfnDeletionPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from config.model import RedisConfig
from constructs_lib.compliance import acknowledge
from constructs_lib.stable_ids import Group

REDIS_PORT = 6379
REDIS_ENGINE_VERSION = "7.1"


class RedisCache(Group):
    """A replication group of one primary and one replica in two AZs.

    Defaults:
    - TLS required in transit, an AUTH token from Secrets Manager (a dynamic reference, resolved by CloudFormation,
      never in the template), at-rest encryption with `key`.
    - `maxmemory-policy noeviction`: Langfuse keeps its queues here, and evicting keys would lose events.
    - A final snapshot when deleted or replaced; daily snapshots kept as configured.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        qualifier: str,
        settings: RedisConfig,
        subnet_ids: Sequence[str],
        security_group: ec2.ISecurityGroup,
        key: kms.IKey,
        auth_token: secretsmanager.ISecret,
    ) -> None:
        super().__init__(scope, construct_id)
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "RedisSubnetGroup",
            description=f"{qualifier} Redis: private data subnets",
            subnet_ids=list(subnet_ids),
        )
        parameter_group = elasticache.CfnParameterGroup(
            self,
            "RedisParameters",
            cache_parameter_group_family="redis7",
            description=f"{qualifier} Redis 7: noeviction (Langfuse queues)",
            properties={"maxmemory-policy": "noeviction"},
        )
        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "Redis",
            replication_group_description=f"{qualifier} Redis (LiteLLM cache, Langfuse queues)",
            engine="redis",
            engine_version=REDIS_ENGINE_VERSION,
            cache_node_type=settings.node_type,
            num_cache_clusters=2,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            at_rest_encryption_enabled=True,
            kms_key_id=key.key_arn,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=auth_token.secret_value.unsafe_unwrap(),  # a dynamic reference, resolved by CloudFormation
            port=REDIS_PORT,
            cache_subnet_group_name=subnet_group.ref,
            cache_parameter_group_name=parameter_group.ref,
            security_group_ids=[security_group.security_group_id],
            preferred_maintenance_window="sun:04:30-sun:05:30",
            snapshot_window="03:00-04:00",
            snapshot_retention_limit=settings.snapshot_retention_days,
            auto_minor_version_upgrade=True,
        )
        acknowledge(
            self.replication_group,
            {
                "AwsSolutions-AEC5": "Redis keeps its standard port: only the platform's security groups reach it, "
                "inside private data subnets, with TLS and an AUTH token.",
                "ElastiCacheRedisClusterAutomaticBackup": "Redis holds LiteLLM's cache and Langfuse's in-flight queues, "
                f"not a system of record: {settings.snapshot_retention_days} day(s) of snapshots (config) restore "
                "a recent state; durable data is in PostgreSQL, ClickHouse and S3.",
            },
        )
        self.replication_group.cfn_options.deletion_policy = CfnDeletionPolicy.SNAPSHOT
        self.replication_group.cfn_options.update_replace_policy = CfnDeletionPolicy.SNAPSHOT
        self.endpoint = self.replication_group.attr_primary_end_point_address
        self.port = self.replication_group.attr_primary_end_point_port
        self.auth_token = auth_token
