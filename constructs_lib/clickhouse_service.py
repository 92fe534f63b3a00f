"""ClickHouse: Langfuse's trace store, one server with its data directory on EFS."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from constructs import Construct

from config.model import EnvironmentConfig
from constructs_lib.fargate_service import EfsMount, FargateService, MovedData, ServiceRuntime, ServiceSpec, http_health_check, task_role
from constructs_lib.secret_access import SecretAccess
from constructs_lib.service_catalogue import CLICKHOUSE

CLICKHOUSE_UID = "101"  # the `clickhouse` user of the official image
DATA_PATH = "/clickhouse"  # on the platform's file system, as it was on the workspaces' one
CLICKHOUSE_DATABASE = "langfuse"
CLICKHOUSE_USER = "langfuse"
# Bounds the system log tables, then runs the image's entrypoint (tests/test_clickhouse_start.py runs this file).
START_SCRIPT = (Path(__file__).parent / "scripts" / "clickhouse-start.sh").read_text()


class ClickHouseService(Construct):
    """Exactly one task, never two: deployments stop the old server before starting the new one (min 0 % /
    max 100 %), because two servers on one EFS directory corrupt it. Regular Fargate (stateful), no ALB:
    `clickhouse.<namespace>` on its HTTP and native ports, admitted from Langfuse only (security group).

    The image's entrypoint creates the `langfuse` database and user with the password from Secrets Manager.
    Data lives on the platform's file system (no workspace reaches it) through an access point that acts as uid/gid
    101; logs go to CloudWatch, not to EFS. The system log tables are bounded (scripts/clickhouse-start.sh writes the
    server configuration for it before the image's entrypoint starts the server). Earlier releases kept the data on
    the workspaces' file system: on its first start the task copies it from there (`MovedData`), before the server
    starts.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        runtime: ServiceRuntime,
        file_system: efs.IFileSystem,
        old_file_system: efs.IFileSystem,
        secrets: SecretAccess,
    ) -> None:
        """`file_system`: the platform's, which holds the data; `old_file_system`: the workspaces', where earlier
        releases kept it (config `platform_data.old_clickhouse_data` says what becomes of that copy)."""
        super().__init__(scope, construct_id)
        self.task_role = task_role(self, "TaskRole", f"{config.qualifier}: ClickHouse (its EFS data directory only)")

        def data_directory(construct_id: str, on: efs.IFileSystem) -> efs.AccessPoint:
            return efs.AccessPoint(
                self,
                construct_id,
                file_system=on,
                path=DATA_PATH,
                create_acl=efs.Acl(owner_uid=CLICKHOUSE_UID, owner_gid=CLICKHOUSE_UID, permissions="750"),
                posix_user=efs.PosixUser(uid=CLICKHOUSE_UID, gid=CLICKHOUSE_UID),
            )

        self.access_point = data_directory("PlatformDataAccessPoint", file_system)
        old_data = config.platform_data.old_clickhouse_data
        # The old directory keeps its access point's construct id: the same access point as before this release.
        self.old_access_point = data_directory("DataAccessPoint", old_file_system) if old_data != "none" else None
        moved_from = (
            MovedData(old_file_system, self.old_access_point, remove_source=old_data == "remove")
            if self.old_access_point is not None
            else None
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
                entry_point=("sh", "-c"),
                command=(START_SCRIPT,),
                stateless=False,
                min_healthy_percent=0,
                max_healthy_percent=100,
                container_health_check=http_health_check(
                    f"http://localhost:{CLICKHOUSE.port}{CLICKHOUSE.health_path}", start_period=Duration.seconds(60)
                ),
                efs_mounts=(EfsMount(file_system, self.access_point, "/var/lib/clickhouse", moved_from),),
                ulimit_nofile=262144,  # ClickHouse's recommended open-files limit
            ),
            task_role=self.task_role,
        )
