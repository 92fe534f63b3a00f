"""ClickHouse: Langfuse's trace store, one server with its data directory on EFS."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.fargate_service import EfsMount, FargateService, ServiceRuntime, ServiceSpec, http_health_check, task_role
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import CLICKHOUSE

CLICKHOUSE_UID = "101"  # the `clickhouse` user of the official image
CLICKHOUSE_DATABASE = "langfuse"
CLICKHOUSE_USER = "langfuse"


class ClickHouseService(Construct):
    """Exactly one task, never two: deployments stop the old server before starting the new one (min 0 % /
    max 100 %), because two servers on one EFS directory corrupt it. Regular Fargate (stateful), no ALB:
    `clickhouse.<namespace>` on its HTTP and native ports, admitted from Langfuse only (security group).

    The image's entrypoint creates the `langfuse` database and user with the password from Secrets Manager.
    Data lives on EFS through an access point that acts as uid/gid 101; logs go to CloudWatch, not to EFS.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        file_system: efs.IFileSystem,
        secrets: SecretAccess,
    ) -> None:
        super().__init__(scope, construct_id)
        self.task_role = task_role(self, "TaskRole", f"{config.qualifier}: ClickHouse (its EFS data directory only)")
        self.access_point = efs.AccessPoint(
            self,
            "DataAccessPoint",
            file_system=file_system,
            path="/clickhouse",
            create_acl=efs.Acl(owner_uid=CLICKHOUSE_UID, owner_gid=CLICKHOUSE_UID, permissions="750"),
            posix_user=efs.PosixUser(uid=CLICKHOUSE_UID, gid=CLICKHOUSE_UID),
        )
        self.service = FargateService(
            self,
            "Service",
            runtime=runtime,
            spec=ServiceSpec(
                service=CLICKHOUSE,
                image=config.images.clickhouse,
                cpu=config.tasks.clickhouse.cpu,
                memory_mib=config.tasks.clickhouse.memory_mib,
                desired_count=1,
                environment={
                    "CLICKHOUSE_DB": CLICKHOUSE_DATABASE,
                    "CLICKHOUSE_USER": CLICKHOUSE_USER,
                    "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "0",
                    "CLICKHOUSE_DO_NOT_CHOWN": "1",  # the access point already owns the directory as 101
                },
                secrets={"CLICKHOUSE_PASSWORD": ecs.Secret.from_secrets_manager(secrets["langfuse/clickhouse"])},
                stateless=False,
                min_healthy_percent=0,
                max_healthy_percent=100,
                container_health_check=http_health_check(
                    f"http://localhost:{CLICKHOUSE.port}{CLICKHOUSE.health_path}", start_period=Duration.seconds(60)
                ),
                efs_mounts=(EfsMount(file_system, self.access_point, "/var/lib/clickhouse"),),
                ulimit_nofile=262144,  # ClickHouse's recommended open-files limit
            ),
            task_role=self.task_role,
        )
