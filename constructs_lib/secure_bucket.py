"""An S3 bucket with the platform's defaults."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


class SecureBucket(Construct):
    """S3 bucket for platform data.

    Defaults (none can be turned off by a caller):
    - SSE-KMS with the given key (SSE-S3 without one: log buckets, whose delivery services need it), always with an
      S3 bucket key; all public access blocked; object ownership enforced (no ACLs).
    - S3 server access logs to `access_logs` (bucket name, prefix) when given: `<prefix><bucket name>/`.
    - TLS 1.2+ only: a bucket policy denies plain-HTTP requests and older TLS.
    - RETAIN on stack deletion and on replacement: the data outlives the stack.
    - Versioned buckets expire non-current versions only when ``noncurrent_version_expiration`` is given;
      objects expire only when ``expiration`` is given (log buckets).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket_name: str,
        versioned: bool,
        noncurrent_version_expiration: Duration | None = None,
        expiration: Duration | None = None,
        encryption_key: kms.IKey | None = None,
        access_logs: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        lifecycle_rules = [s3.LifecycleRule(id="AbortIncompleteUploads", abort_incomplete_multipart_upload_after=Duration.days(7))]
        if noncurrent_version_expiration is not None:
            lifecycle_rules.append(
                s3.LifecycleRule(id="ExpireNoncurrentVersions", noncurrent_version_expiration=noncurrent_version_expiration)
            )
        if expiration is not None:
            lifecycle_rules.append(s3.LifecycleRule(id="ExpireObjects", expiration=expiration))
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            encryption=s3.BucketEncryption.KMS if encryption_key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=encryption_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=versioned,
            lifecycle_rules=lifecycle_rules,
            removal_policy=RemovalPolicy.RETAIN,
        )
        if access_logs is not None:
            # Set on the L1 resource: the log bucket lives in another stack, which grants the logging service.
            target_bucket, prefix = access_logs
            cfn_bucket: s3.CfnBucket = self.bucket.node.default_child  # type: ignore[assignment]
            cfn_bucket.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
                destination_bucket_name=target_bucket, log_file_prefix=f"{prefix}{bucket_name}/"
            )
