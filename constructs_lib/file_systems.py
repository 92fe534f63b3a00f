"""The environment's two EFS file systems: the workspaces' and the platform's, each admitting clients only through
access points and over TLS.

Coder creates access points on the workspaces' file system for its templates, and EFS cannot limit the directory
or POSIX user of an access point Coder creates (IAM has no condition key for either): any data on that file system is
within reach of a workspace that Coder's templates, or whoever takes Coder over, point at it. So the platform's own
data (ClickHouse's traces, Coder's configuration) lives on a second file system, which no workspace can reach: its
security group admits the platform's services only, and nobody but Coder and ClickHouse holds a mount grant for it.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from constructs_lib.stable_ids import Group

CLIENT_ACTIONS = ("elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess")


def client_policy() -> iam.PolicyDocument:
    """A file system policy that grants nothing and refuses, to every principal: clients without TLS, clients that do
    not mount through an access point, and root access. Who may mount is said by each role's own policy (same
    account); a client without IAM authorization is anonymous and gets nothing (no statement allows `*`)."""
    anyone = [iam.AnyPrincipal()]
    return iam.PolicyDocument(statements=[
        iam.PolicyStatement(sid="TlsOnly", effect=iam.Effect.DENY, principals=anyone, actions=list(CLIENT_ACTIONS),
                            conditions={"Bool": {"aws:SecureTransport": "false"}}),
        iam.PolicyStatement(sid="AccessPointsOnly", effect=iam.Effect.DENY, principals=anyone,
                            actions=list(CLIENT_ACTIONS), conditions={"Null": {"elasticfilesystem:AccessPointArn": "true"}}),
        iam.PolicyStatement(sid="NoRootAccess", effect=iam.Effect.DENY, principals=anyone,
                            actions=["elasticfilesystem:ClientRootAccess"]),
    ])  # no Resource: a file system policy applies to its own file system


class FileSystems(Group):
    """`workspaces` (logical id unchanged: it holds every workspace's home directory) and `platform`.

    Defaults: encrypted with the data key, bursting throughput, infrequent-access after 30 days, retained on
    deletion, backed up by the Data layer's plan (not EFS's own backups), the file system policy of `client_policy`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        qualifier: str,
        workspaces_security_group: ec2.ISecurityGroup,
        platform_security_group: ec2.ISecurityGroup,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)

        def file_system(construct_id: str, security_group: ec2.ISecurityGroup, name: str) -> efs.FileSystem:
            return efs.FileSystem(
                self,
                construct_id,
                file_system_name=name,
                vpc=vpc,
                vpc_subnets=subnets,
                security_group=security_group,
                encrypted=True,
                kms_key=key,
                performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
                throughput_mode=efs.ThroughputMode.BURSTING,
                lifecycle_policy=efs.LifecyclePolicy.AFTER_30_DAYS,
                enable_automatic_backups=False,  # the Data layer's AWS Backup plan covers it
                removal_policy=RemovalPolicy.RETAIN,
                file_system_policy=client_policy(),
                # CDK's way of denying anonymous clients adds an Allow of ClientWrite and ClientRootAccess for every
                # principal; `client_policy` denies them without it (it allows nothing to anyone).
                allow_anonymous_access=True,
            )

        self.workspaces = file_system("FileSystem", workspaces_security_group, f"{qualifier}-workspaces")
        self.platform = file_system("PlatformFileSystem", platform_security_group, f"{qualifier}-platform")
