"""Least-privilege access to the Data layer's buckets (SSE-KMS with the data key) from roles in later stacks.

Bucket ARNs are written from the buckets' configured names rather than cross-stack references, so that a policy
reads as what it allows and its cdk-nag acknowledgments can name the exact resource they are about.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from constructs_lib.compliance import acknowledge

READ = ("s3:GetObject",)
READ_WRITE = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")


def bucket_arn(role: iam.IRole, bucket_name: str) -> str:
    return f"arn:{Stack.of(role).partition}:s3:::{bucket_name}"


def grant_objects(
    role: iam.IRole,
    bucket_names: Sequence[str],
    actions: Sequence[str],
    key: kms.IKey,
    *,
    sid: str,
    reason: str,
) -> None:
    """`actions` on every object of the buckets, ListBucket on the buckets, and the data key through S3 only.
    `reason` says why the role needs every object of these buckets (it becomes the wildcard's acknowledgment)."""
    stack = Stack.of(role)
    objects = [f"{bucket_arn(role, name)}/*" for name in bucket_names]
    role.add_to_principal_policy(iam.PolicyStatement(sid=f"{sid}Objects", actions=list(actions), resources=objects))
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid=f"{sid}List", actions=["s3:ListBucket"], resources=[bucket_arn(role, name) for name in bucket_names]
        )
    )
    key_actions = ["kms:Decrypt"] + (["kms:GenerateDataKey"] if set(actions) - set(READ) else [])
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid=f"{sid}Key",
            actions=key_actions,
            resources=[key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
        )
    )
    acknowledge(role, {f"AwsSolutions-IAM5[Resource::{arn}]": reason for arn in objects})
