"""The bucket that receives access logs (ALB, S3 server access logs, VPC flow logs) in an account."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.compliance import acknowledge
from constructs_lib.secure_bucket import SecureBucket

LOG_RETENTION_DAYS = 365


def log_bucket(scope: Construct, construct_id: str, *, bucket_name: str, s3_access_prefix: str) -> s3.IBucket:
    """A SecureBucket (SSE-S3: the only encryption log delivery supports) whose logs expire after a year, which
    S3 server access logging of this account may write under `s3_access_prefix`. Its own cdk-nag findings are
    acknowledged here: it is where logs go, not where data lives."""
    bucket = SecureBucket(
        scope, construct_id, bucket_name=bucket_name, versioned=False, expiration=Duration.days(LOG_RETENTION_DAYS)
    ).bucket
    bucket.add_to_resource_policy(
        iam.PolicyStatement(
            sid="S3ServerAccessLogs",
            principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
            actions=["s3:PutObject"],
            resources=[bucket.arn_for_objects(f"{s3_access_prefix}*")],
            conditions={"StringEquals": {"aws:SourceAccount": Stack.of(scope).account}},
        )
    )
    loop = "This is the access-log destination itself; logging it into itself would loop."
    acknowledge(
        bucket,
        {
            "AwsSolutions-S1": loop,
            "S3BucketLoggingEnabled": loop,
            "S3DefaultEncryptionKMS": "ALB access logs and S3 server access logs can only be delivered to SSE-S3 "
            "buckets; logs carry request metadata, not platform data.",
            "S3BucketVersioningEnabled": f"Write-once logs that expire after {LOG_RETENTION_DAYS} days; versioning "
            "would keep deleted logs beyond the retention period.",
            "S3BucketReplicationEnabled": "Logs stay in their account's region, where S3 keeps them durable.",
        },
    )
    return bucket
