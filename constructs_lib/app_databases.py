"""One PostgreSQL database and one least-privilege login per application, made at deploy time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from constructs_lib.python_lambda import LAMBDAS_DIR, SHARED_DIR, FunctionNetwork, python_code, python_function


def handler_version() -> str:
    """A digest of the handler's code and pins: a new handler re-runs the reconciliation on the next deploy."""
    digest = hashlib.sha256()
    handler_dir = LAMBDAS_DIR / "db_bootstrap"
    for path in sorted([*handler_dir.glob("*.py"), handler_dir / "requirements.txt", *SHARED_DIR.glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class AppDatabases(Construct):
    """A custom resource (pure-Python driver pg8000, no Docker) that makes each app's role and database on the RDS
    instance and writes the `url` field of the app's secret (see constructs_lib/lambdas/db_bootstrap/).

    Defaults:
    - The function runs in the given private subnets with its own security group (PostgreSQL to the database,
      HTTPS to the Secrets Manager endpoint); it reads the master secret, reads and writes only the app secrets.
    - Runs on create, and again whenever the endpoint, the set of apps or the handler's code changes; an operator
      can re-run it any time (`aws lambda invoke`, README) after changing a password in an app secret.
    - Delete does nothing: databases and logins stay with the data.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        instance: rds.IDatabaseInstance,
        master_secret: secretsmanager.ISecret,
        app_secrets: Mapping[str, secretsmanager.ISecret],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        encryption_key: kms.IKey,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        app_secret_arns = {app: secret.secret_arn for app, secret in sorted(app_secrets.items())}
        self.function = python_function(
            self,
            "Function",
            code=python_code("db_bootstrap"),
            handler="index.handler",
            timeout=Duration.minutes(5),
            description="Creates or repairs one PostgreSQL database and login per app; writes each app's connection URL",
            logs_key=logs_key,
            log_group_id="Logs",
            invoked_by="CloudFormation (custom resource) or an operator",
            network=FunctionNetwork(vpc, subnets, security_group),
            environment={
                "MASTER_SECRET_ARN": master_secret.secret_arn,
                "APP_SECRET_ARNS": stack.to_json_string(app_secret_arns),
            },
        )
        master_secret.grant_read(self.function)
        for secret in app_secrets.values():
            secret.grant_read(self.function)
        # Writing the `url` field: a new secret value, nothing else (no UpdateSecret: key and policy stay as made).
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="WriteConnectionUrls", actions=["secretsmanager:PutSecretValue"], resources=list(app_secret_arns.values())
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="EncryptNewSecretVersions",
                actions=["kms:GenerateDataKey"],
                resources=[encryption_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{stack.region}.amazonaws.com"}},
            )
        )

        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type="Custom::AppDatabases",
            properties={
                "MasterSecretArn": master_secret.secret_arn,
                "AppSecretArns": app_secret_arns,
                "Endpoint": instance.db_instance_endpoint_address,
                "Port": instance.db_instance_endpoint_port,
                "Apps": json.dumps(sorted(app_secrets)),
                "HandlerVersion": handler_version(),
            },
        )
        # The instance must accept connections and the function's policy must exist before the first run.
        self.resource.node.add_dependency(instance)
        self.resource.node.add_dependency(self.function)
