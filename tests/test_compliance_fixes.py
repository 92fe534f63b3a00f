"""What was fixed rather than acknowledged for the four compliance packs, and the state of the acknowledgments:
every one carries a reason, and the compliance report passes for each Stage and the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.compliance import load
from tests.assembly import ROOT


@pytest.fixture
def network(assembly, stage):
    return assembly.stack(stage, "Network")


@pytest.fixture
def data(assembly, stage):
    return assembly.stack(stage, "Data")


def test_vpc_flow_logs_to_the_log_bucket(network):
    (flow_log,) = network.props("AWS::EC2::FlowLog")
    assert (flow_log["ResourceType"], flow_log["TrafficType"], flow_log["LogDestinationType"]) == ("VPC", "ALL", "s3")
    assert flow_log["LogDestination"]["Fn::Join"][1][1] == "/vpc-flow-logs/"
    assert "AccessLogsBucket" in json.dumps(flow_log["LogDestination"])


def test_every_log_group_is_encrypted_with_the_logs_key_and_kept_a_year(assembly, stage, env_config):
    network = assembly.stack(stage, "Network")
    key = network.logical_id("/Network/LogsKey/Resource")
    policy = network.resources[key]["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in policy if s.get("Sid") == "CloudWatchLogsOfThisAccount"]
    assert logs["Principal"] == {"Service": "logs.us-west-2.amazonaws.com"}
    counted = 0
    for layer in ("Data", "Platform", "Observability"):
        template = assembly.stack(stage, layer)
        for group in template.props("AWS::Logs::LogGroup"):
            assert group["RetentionInDays"] == 365
            assert "LogsKey" in json.dumps(group["KmsKeyId"]) and group["KmsKeyId"]["Fn::GetStackOutput"]
            counted += 1
    # 2 RDS exports, 2 Lambdas in Data (+ termination protection's in production); 3 services (+ ECS Exec sessions
    # where allowed); 3 services (+ Langfuse web replicas), the probe and the workspace guard
    langfuse_web_replicas = env_config.services.langfuse_web_desired_count > 1
    assert counted == 12 + env_config.ecs_exec + env_config.is_production + langfuse_web_replicas


def test_rds_logs_monitoring_and_identifier(data, env_config):
    db = data.one("AWS::RDS::DBInstance")
    identifier = f"coder-{env_config.name}-postgres"
    assert db["DBInstanceIdentifier"] == identifier
    assert db["MonitoringInterval"] == 60 and "MonitoringRole" in json.dumps(db["MonitoringRoleArn"])
    names = {g["LogGroupName"] for g in data.props("AWS::Logs::LogGroup") if "LogGroupName" in g}
    assert names == {f"/aws/rds/instance/{identifier}/postgresql", f"/aws/rds/instance/{identifier}/upgrade"}
    postgres = data.resources[data.logical_id("/Data/Database/Postgres/Resource")]
    assert all(data.logical_id(f"/Data/Database/PostgresLogs{k}/Resource") in postgres["DependsOn"] for k in ("Postgresql", "Upgrade"))
    assert not data.of_type("Custom::LogRetention")  # no log-retention Lambda any more


def test_master_login_rotates_every_30_days_inside_the_vpc(data, env_config):
    (schedule,) = data.props("AWS::SecretsManager::RotationSchedule")
    assert schedule["SecretId"] == {"Ref": data.logical_id("/Data/Database/PostgresMasterSecret/Resource")}
    assert schedule["RotationRules"]["ScheduleExpression"] == "rate(30 days)"
    hosted = schedule["HostedRotationLambda"]
    assert hosted["RotationType"] == "PostgreSQLSingleUser"
    assert hosted["RotationLambdaName"] == f"coder-{env_config.name}-postgres-master-rotation"
    assert "DbBootstrapSecurityGroup" in json.dumps(hosted["VpcSecurityGroupIds"])
    assert json.dumps(hosted["VpcSubnetIds"]).count("PrivateAppSubnet") == 2
    assert "DataKey" in json.dumps(hosted["KmsKeyArn"])


def test_backup_plan_covers_database_file_system_and_locks(data, env_config):
    vault = data.one("AWS::Backup::BackupVault")
    assert vault["BackupVaultName"] == f"coder-{env_config.name}-backups"
    # Governance-mode lock: no ChangeableForDays (that would be compliance mode); nothing kept shorter than the plan.
    assert vault["LockConfiguration"] == {"MinRetentionDays": 35}
    assert "DataKey" in json.dumps(vault["EncryptionKeyArn"])
    (rule,) = data.one("AWS::Backup::BackupPlan")["BackupPlan"]["BackupPlanRule"]
    assert rule["Lifecycle"] == {"DeleteAfterDays": 35} and rule["ScheduleExpression"] == "cron(0 5 * * ? *)"
    resources = json.dumps(data.one("AWS::Backup::BackupSelection")["BackupSelection"]["Resources"])
    for construct in ("Database/Postgres/Resource", "FileSystems/FileSystem/Resource",
                      "FileSystems/PlatformFileSystem/Resource", "TerraformLockTable/Resource"):
        assert data.logical_id(f"/Data/{construct}") in resources, construct
    for fs in data.props("AWS::EFS::FileSystem"):
        assert fs.get("BackupPolicy", {}).get("Status") != "ENABLED"  # one plan, not two


def test_every_acknowledgment_has_a_reason(assembly):
    entries = [e for e in load(assembly.directory) if e.status == "acknowledged"]
    assert len(entries) > 100
    short = [(e.rule, e.stage, e.stack, e.path) for e in entries if len(e.detail.strip()) < 20]
    assert short == []


@pytest.mark.parametrize("stage_name", ["Pipeline", "Staging", "Production"])
def test_compliance_report_of_each_stage_refuses_only_the_shipped_example_values(assembly, app_config, tmp_path, stage_name):
    """No open finding anywhere; the shipped config's example values (placeholder accounts, all-zero Azure AD ids,
    example domains) stop each stage's pre-step, each named with its field: nothing deploys with them."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.compliance", "--assembly", str(assembly.directory), "--stage", stage_name,
         "--junit", str(tmp_path / "c.xml"), "--markdown", str(tmp_path / "c.md")],
        cwd=ROOT, capture_output=True, text=True,
    )
    expected = (app_config.pipeline.example_values() if stage_name == "Pipeline"
                else app_config.environment(stage_name).example_values())
    assert expected and result.returncode == 1, result.stdout + result.stderr
    named = [line.removeprefix("example value: ").split(" (set the real")[0]
             for line in result.stdout.splitlines() if line.startswith("example value: ")]
    assert sorted(named) == sorted(f"{field} = {value!r}" for field, value in expected)
    assert "open:" not in result.stdout
    markdown = (tmp_path / "c.md").read_text()
    assert "| AwsSolutions | 0 |" in markdown and "0 open finding(s)" in markdown and "**FAIL**" in markdown


def test_backups_copy_to_a_vault_in_another_region_when_configured(assembly, variant):
    from tests.synths import VARIANT_COPY_VAULT

    (rule,) = variant.assembly.stack("Staging", "Data").one("AWS::Backup::BackupPlan")["BackupPlan"]["BackupPlanRule"]
    assert rule["CopyActions"] == [{"DestinationBackupVaultArn": VARIANT_COPY_VAULT, "Lifecycle": {"DeleteAfterDays": 35}}]
    (plain,) = assembly.stack("Staging", "Data").one("AWS::Backup::BackupPlan")["BackupPlan"]["BackupPlanRule"]
    assert "CopyActions" not in plain
