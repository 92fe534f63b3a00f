"""Taking over the Terraform deployment (`pipeline.adopt`): against a moto account holding the Terraform-era
resources under the names the stacks fix (created with boto3 as Terraform would, some matching the templates and some
not) and a `terraform show -json` document of them: the collisions, their classification, the import files (checked
against what `cdk import` and CloudFormation's IMPORT change sets accept), Terraform's removed blocks, the runbook;
the restore-from-snapshot config in the Data template; bad input."""

from __future__ import annotations

import json
import re
import subprocess

import boto3
import pytest

from config.loader import DEFAULT_CONFIG_PATH
from pipeline import adopt, changes
from tests.assembly import ROOT
from tests.synths import VARIANT_SNAPSHOT, tool_env

PRODUCTION = "333333333333"
REGION = "us-west-2"
SNAPSHOT = "coder-production-postgres-final-terraform"


@pytest.fixture
def world(moto_endpoint, monkeypatch):
    """The production account as Terraform left it, reached through the lookup role from other credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    base = boto3.session.Session(region_name=REGION)
    credentials = base.client("sts").assume_role(RoleArn=f"arn:aws:iam::{PRODUCTION}:role/terraform",
                                                 RoleSessionName="terraform")["Credentials"]
    session = boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"], region_name=REGION,
                                    aws_secret_access_key=credentials["SecretAccessKey"],
                                    aws_session_token=credentials["SessionToken"])
    secrets = session.client("secretsmanager")
    master = secrets.create_secret(Name="prod/rds/master", SecretString=json.dumps({"username": "coder", "password": "x" * 24}))
    secrets.create_secret(Name="prod/litellm/master-key", SecretString="sk-terraform", Description="LiteLLM master key")
    s3 = session.client("s3")
    backups = f"coder-production-backups-{PRODUCTION}-{REGION}"
    s3.create_bucket(Bucket=backups, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.create_bucket(Bucket="coder-langfuse-events", CreateBucketConfiguration={"LocationConstraint": REGION})
    session.client("dynamodb").create_table(
        TableName="coder-production-terraform-locks", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}], AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}])
    logs = session.client("logs")
    logs.create_log_group(logGroupName="/aws/rds/instance/coder-production-postgres/postgresql")
    logs.put_retention_policy(logGroupName="/aws/rds/instance/coder-production-postgres/postgresql", retentionInDays=7)
    session.client("ssm").put_parameter(Name="/coder-production/cluster-arn", Value="arn:old", Type="String")
    session.client("ecs").create_cluster(clusterName="coder-production")
    rds = session.client("rds")
    rds.create_db_instance(DBInstanceIdentifier="coder-production-postgres", Engine="postgres", EngineVersion="16.4",
                           DBInstanceClass="db.r6g.large", MasterUsername="coder", MasterUserPassword="x" * 24,
                           AllocatedStorage=100, StorageEncrypted=True)
    key = session.client("kms").create_key(Description="terraform data key")["KeyMetadata"]
    efs = session.client("efs").create_file_system(CreationToken="terraform-efs", Encrypted=True)
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    clients = ec2.create_security_group(GroupName="coder-services", Description="services", VpcId=vpc)["GroupId"]
    mounts = ec2.create_security_group(GroupName="coder-efs", Description="efs", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=mounts, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 2049, "ToPort": 2049, "UserIdGroupPairs": [{"GroupId": clients}]}])
    session.client("efs").create_mount_target(FileSystemId=efs["FileSystemId"], SubnetId=subnet, SecurityGroups=[mounts])
    state = {"format_version": "1.0", "terraform_version": "1.9.8", "values": {"root_module": {
        "resources": [
            _tf("aws_db_instance", "main", {"identifier": "coder-production-postgres", "engine": "postgres"}),
            _tf("aws_s3_bucket", "backups", {"bucket": backups}),
            _tf("aws_s3_bucket", "langfuse_events", {"bucket": "coder-langfuse-events"}),
            _tf("aws_dynamodb_table", "locks", {"name": "coder-production-terraform-locks"}),
            _tf("aws_ssm_parameter", "cluster_arn", {"name": "/coder-production/cluster-arn"}),
            _tf("aws_ecs_cluster", "main", {"name": "coder-production"}),
            _tf("aws_cloudwatch_log_group", "postgres", {"name": "/aws/rds/instance/coder-production-postgres/postgresql"}),
            _tf("aws_kms_key", "data", {"id": key["KeyId"], "arn": key["Arn"]}),
            _tf("aws_efs_file_system", "home", {"id": efs["FileSystemId"]}),
            _tf("aws_security_group", "alb", {"id": "sg-0123456789abcdef0", "name": "coder-alb"}),
            _tf("aws_s3_bucket_versioning", "backups", {"bucket": backups, "versioning_configuration": [{"status": "Enabled"}]}),
            _tf("aws_secretsmanager_secret_rotation", "rds", {"secret_id": master["ARN"], "rotation_lambda_arn": "arn:x"}),
        ],
        "child_modules": [{"address": "module.secrets", "resources": [
            {**_tf("aws_secretsmanager_secret", "this", {"name": "prod/rds/master", "arn": master["ARN"]}),
             "address": 'module.secrets.aws_secretsmanager_secret.this["rds"]', "index": "rds"},
            {**_tf("aws_secretsmanager_secret", "this", {"name": "prod/litellm/master-key"}),
             "address": 'module.secrets.aws_secretsmanager_secret.this["litellm"]', "index": "litellm"},
        ]}],
    }}}
    return session, state


def _tf(kind: str, name: str, values: dict) -> dict:
    return {"address": f"{kind}.{name}", "mode": "managed", "type": kind, "name": name,
            "provider_name": "registry.terraform.io/hashicorp/aws", "schema_version": 0, "values": values}


def _config_with_snapshot(tmp_path, snapshot: str = "") -> str:
    """The shipped config, production's database restored from `snapshot`."""
    text = DEFAULT_CONFIG_PATH.read_text()
    head, production = text.rsplit("\n[[environments]]", 1)
    production = production.replace('snapshot_identifier = ""', f'snapshot_identifier = "{snapshot}"', 1)
    path = tmp_path / "config.toml"
    path.write_text(head + "\n[[environments]]" + production)
    return str(path)


def _run(assembly, tmp_path, capsys, state: dict | None, *args: str, snapshot: str = "") -> tuple[int, str, str]:
    argv = ["--environment", "production", "--assembly", str(assembly.directory), "--out", str(tmp_path / "out"),
            "--config", _config_with_snapshot(tmp_path, snapshot), *args]
    if state is not None:
        (tmp_path / "state.json").write_text(json.dumps(state))
        argv += ["--terraform-state", str(tmp_path / "state.json")]
    code = adopt.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _findings(tmp_path) -> dict[str, dict]:
    document = json.loads((tmp_path / "out" / "collisions.json").read_text())
    return {f["name"]: f for f in document["findings"]}


def test_collisions_are_found_and_classified_with_their_differences(assembly, world, tmp_path, capsys):
    session, state = world
    session.client("rds").create_db_snapshot(DBInstanceIdentifier="coder-production-postgres", DBSnapshotIdentifier=SNAPSHOT)
    code, out, _ = _run(assembly, tmp_path, capsys, state, snapshot=SNAPSHOT)
    assert code == 1, out
    found = _findings(tmp_path)
    actions = {name: f["action"] for name, f in found.items()}
    backups = f"coder-production-backups-{PRODUCTION}-{REGION}"
    assert {k: actions[k] for k in ("prod/rds/master", "prod/litellm/master-key", backups, "coder-production-terraform-locks",
                                    "/aws/rds/instance/coder-production-postgres/postgresql")} == dict.fromkeys(
        ("prod/rds/master", "prod/litellm/master-key", backups, "coder-production-terraform-locks",
         "/aws/rds/instance/coder-production-postgres/postgresql"), "import")
    assert actions["coder-production-postgres"] == "restore"
    assert actions["/coder-production/cluster-arn"] == actions["coder-production"] == "leave to Terraform"
    assert actions["coder-langfuse-events"] == "copy"
    assert found["coder-langfuse-events"]["notes"] == [
        f"aws s3 sync s3://coder-langfuse-events s3://coder-production-langfuse-events-{PRODUCTION}-{REGION}"]
    assert [f for f in found.values() if f["type"] == "AWS::EFS::FileSystem"][0]["action"] == "copy"
    assert [f for f in found.values() if f["type"] == "AWS::KMS::Key"][0]["action"] == "keep"
    # what differs, and what blocks: a key schema CloudFormation would replace the table for
    table = found["coder-production-terraform-locks"]
    assert any(line.startswith("KeySchema: live") for line in table["blocking"])
    log_group = found["/aws/rds/instance/coder-production-postgres/postgresql"]
    assert "RetentionInDays: live 7, template 365" in log_group["differences"] and not log_group["blocking"]
    assert any(line.startswith("Description: live \"LiteLLM master key\"") for line in found["prod/litellm/master-key"]["differences"])
    assert found["coder-production-postgres"]["blocking"] == []
    assert found["coder-production-postgres"]["notes"][0].startswith(f"{SNAPSHOT} exists (postgres 16.4, taken ")
    assert "change first: KeySchema: live" in out
    document = json.loads((tmp_path / "out" / "collisions.json").read_text())
    assert document["terraform_destroyed_after_cutover"] == ["aws_security_group.alb"]
    # the table that must change first is not imported: no file names it
    mapping = json.loads((tmp_path / "out" / "Production-Data.mapping.json").read_text())
    assert table["logical_id"] not in mapping and len(mapping) == 4


def test_the_import_files_are_what_cdk_import_and_cloudformation_accept(world, tmp_path, capsys, assembly):
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    _, state = world
    _run(assembly, tmp_path, capsys, state)
    out = tmp_path / "out"
    data = assembly.stack("Production", "Data").body
    mapping = json.loads((out / "Production-Data.mapping.json").read_text())
    assert len(mapping) == 4  # the lock table must change first
    for logical_id, identifier in mapping.items():
        kind = data["Resources"][logical_id]["Type"]  # a logical id of the stack's template
        primary = [p.split("/")[-1] for p in PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, kind).schema["primaryIdentifier"]]
        assert sorted(identifier) == sorted(primary) and all(isinstance(v, str) and v for v in identifier.values())
    to_import = json.loads((out / "Production-Data.resources-to-import.json").read_text())
    assert {(r["LogicalResourceId"], json.dumps(r["ResourceIdentifier"], sort_keys=True)) for r in to_import} == {
        (lid, json.dumps(ident, sort_keys=True)) for lid, ident in mapping.items()}
    template = json.loads((out / "Production-Data.import.json").read_text())
    assert set(template["Resources"]) == set(mapping) and "Outputs" not in template
    for logical_id, resource in template["Resources"].items():
        assert resource["DeletionPolicy"] == "Retain"
        assert not changes._references(resource.get("Properties", {})) - set(mapping), logical_id
        # nor another stack's output: the Network stack does not exist when the import runs
        assert "Fn::GetStackOutput" not in json.dumps(resource) and "Fn::ImportValue" not in json.dumps(resource)
        assert resource["Properties"][adopt.TYPES[resource["Type"]][0]] == data["Resources"][logical_id]["Properties"][
            adopt.TYPES[resource["Type"]][0]]
    secret = next(r for r in template["Resources"].values() if r["Properties"].get("Name") == "prod/litellm/master-key")
    original = next(r for r in data["Resources"].values() if r["Type"] == "AWS::SecretsManager::Secret"
                    and r["Properties"].get("Name") == "prod/litellm/master-key")
    # the generator stays as the template has it: the first deploy's update does not make a new value
    assert secret["Properties"].get("GenerateSecretString") == original["Properties"].get("GenerateSecretString")
    assert "KmsKeyId" not in secret["Properties"]  # the stack's key: the live secret has none of its own
    lint = subprocess.run([str(ROOT / ".venv" / "bin" / "cfn-lint"), str(out / "Production-Data.import.json")],
                          cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_terraform_forgets_what_the_stacks_adopt_and_destroys_only_stateless_collisions(assembly, world, tmp_path, capsys):
    _, state = world
    _run(assembly, tmp_path, capsys, state)
    removed = (tmp_path / "out" / "terraform-removed.tf").read_text()
    blocks = re.findall(r"removed \{\n  from = (\S+)\n\n  lifecycle \{\n    destroy = false\n  \}\n\}", removed)
    assert sorted(blocks) == sorted(["aws_db_instance.main", "aws_s3_bucket.backups", "aws_s3_bucket.langfuse_events",
                                     "aws_dynamodb_table.locks", "aws_cloudwatch_log_group.postgres", "aws_kms_key.data",
                                     "aws_efs_file_system.home", "aws_s3_bucket_versioning.backups",
                                     "aws_secretsmanager_secret_rotation.rds"])
    document = json.loads((tmp_path / "out" / "collisions.json").read_text())
    assert sorted(document["terraform_state_rm"]) == [
        "terraform state rm 'module.secrets.aws_secretsmanager_secret.this[\"litellm\"]'",
        "terraform state rm 'module.secrets.aws_secretsmanager_secret.this[\"rds\"]'"]
    runbook = (tmp_path / "out" / "runbook.md").read_text()
    assert "terraform destroy -target='aws_ssm_parameter.cluster_arn'" in runbook
    assert "terraform destroy -target='aws_ecs_cluster.main'" in runbook
    assert "destroy -target='aws_db_instance" not in runbook and "destroy -target='aws_s3" not in runbook


def test_the_runbook_goes_step_by_step_with_a_way_back_at_each(assembly, world, tmp_path, capsys):
    _, state = world
    _run(assembly, tmp_path, capsys, state)
    runbook = (tmp_path / "out" / "runbook.md").read_text()
    steps = re.findall(r"^## (\d+)\. (.+)$", runbook, re.M)
    assert [title for _, title in steps] == [
        "Freeze and final snapshot", "Terraform lets go", "Free the database's name", "Import into Production-Data",
        "Network and Data, by hand", "Copy the data that moves", "The pipeline's first deploy", "Switch the names",
        "Check, then open", "After the cutover"]
    assert [int(n) for n, _ in steps] == list(range(1, len(steps) + 1))
    sections = re.split(r"^## \d+\. ", runbook, flags=re.M)[1:]
    assert all("Back:" in section for section in sections[:-1])
    assert "aws codepipeline disable-stage-transition --pipeline-name coder-platform --stage-name Production" in sections[0]
    assert "aws codepipeline enable-stage-transition --pipeline-name coder-platform --stage-name Production" in sections[6]
    assert f"aws rds create-db-snapshot --db-instance-identifier coder-production-postgres --db-snapshot-identifier {SNAPSHOT}" in runbook
    assert "--change-set-type IMPORT" in runbook and "Production-Data.resources-to-import.json" in runbook
    assert "npx cdk import --app " in runbook and "assembly-CoderPipeline-Production CoderPipeline/Production/Data " \
        "--resource-mapping" in runbook
    assert "CoderPipeline/Production/Network CoderPipeline/Production/Data --exclusively" in sections[4]
    # DataSync reaches the Terraform file system where its mount targets admit it (read from the account)
    assert re.search(r"SubnetArn=arn:aws:ec2:us-west-2:333333333333:subnet/subnet-\w+,SecurityGroupArns=arn:aws:ec2:"
                     r"us-west-2:333333333333:security-group/sg-\w+ ", sections[5])
    policy = json.loads((tmp_path / "out" / "efs-workspaces.policy.json").read_text())
    assert {s["Sid"] for s in policy["Statement"]} == {"TlsOnly", "AccessPointsOnly", "NoRootAccess"}
    assert "## Before you start: what must change first" in runbook
    assert "database.snapshot_identifier is empty" in runbook  # this config restores nothing yet
    # the freeze holds through Terraform's own code, and stops what writes to the home directories
    assert "`desired_count = 0` and `terraform apply`" in sections[0]
    assert sections[0].index("stop every workspace in Coder") < sections[0].index("`desired_count = 0`")
    assert ("for service in $(aws ecs list-services --cluster coder-production --query serviceArns --output text); do "
            "aws ecs update-service --cluster coder-production --service $service --desired-count 0") in sections[0]
    assert 'until [ -z "$(aws ecs list-tasks --cluster coder-production --query taskArns --output text)" ]' in sections[0]
    assert "aws secretsmanager cancel-rotate-secret --secret-id prod/rds/master" in sections[0]
    # the hand deploy: no rollback, JSON secrets checked first, and a way back past the protections
    assert "--exclusively --require-approval never --no-rollback" in sections[4]
    assert "not a JSON object: prod/litellm/master-key" in sections[4]
    assert "--no-enable-termination-protection --stack-name Production-Data" in sections[4]
    assert "--move-to-version-id $(cat " in sections[4]
    # the copy: waited for, cleaned up; the relaxed policy exempts the copy role alone
    assert "until STATUS=$(aws datasync describe-task-execution" in sections[5] and "aws datasync delete-task" in sections[5]
    assert '"ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::333333333333:role/coder-production-adopt-datasync"}' in sections[5]
    # the rename is waited for under the new name (a waiter on it would fail at once: DBInstanceNotFound)
    assert "until [ \"$(aws rds describe-db-instances --db-instance-identifier coder-production-postgres-terraform" in sections[2]
    # the copy reads what it needs from the outputs of the stacks deployed by hand in the step before it
    used = set(re.findall(r"describe-stacks --stack-name (\S+)", sections[5]))
    assert used == {"Production-Data", "Production-Network"}
    assert all(f"CoderPipeline/Production/{name.split('-')[1]}" in sections[4] for name in used)
    assert "ssm get-parameter" not in sections[5]  # the Platform stack's parameters do not exist yet


def test_a_terraform_database_of_another_name_is_restored_from_its_own_snapshot(assembly, world, tmp_path, capsys):
    session, state = world
    rds = session.client("rds")
    rds.create_db_instance(DBInstanceIdentifier="coder-prod-db", Engine="postgres", EngineVersion="15.8",
                           DBInstanceClass="db.r6g.large", MasterUsername="coder", MasterUserPassword="x" * 24,
                           AllocatedStorage=200, StorageEncrypted=False)
    rds.delete_db_instance(DBInstanceIdentifier="coder-production-postgres", SkipFinalSnapshot=True)
    session.client("secretsmanager").delete_secret(SecretId="prod/rds/master", ForceDeleteWithoutRecovery=True)
    resources = state["values"]["root_module"]["resources"]
    resources[0] = _tf("aws_db_instance", "main", {"identifier": "coder-prod-db", "engine": "postgres"})
    resources[:] = [r for r in resources if r["type"] != "aws_efs_file_system"] + [
        _tf("aws_efs_file_system", "home", {"id": "fs-11111111"}), _tf("aws_efs_file_system", "clickhouse", {"id": "fs-22222222"})]
    code, out, err = _run(assembly, tmp_path, capsys, state)
    assert code == 1, out + err
    found = json.loads((tmp_path / "out" / "collisions.json").read_text())["findings"]
    (database,) = [f for f in found if f["action"] == "restore"]
    assert database["source"] == "coder-prod-db" and database["terraform"] == ["aws_db_instance.main"]
    blocking = " ".join(database["blocking"])
    assert "the instance coder-prod-db is not encrypted" in blocking and "PostgreSQL 15 (coder-prod-db), the template 16" in blocking
    assert "database.snapshot_identifier is empty" in blocking and "coder-prod-db-final-terraform" in blocking
    assert "200 GiB allocated (coder-prod-db), the template 100: set database.allocated_storage_gb to at least 200" in blocking
    assert "prod/rds/master is not in the account to import" in blocking
    copies = [f for f in found if f["type"] == "AWS::EFS::FileSystem"]
    assert len(copies) == 2 and all("2 Terraform file systems" in " ".join(f["blocking"]) for f in copies)
    runbook = (tmp_path / "out" / "runbook.md").read_text()
    assert "--db-instance-identifier coder-prod-db --db-snapshot-identifier coder-prod-db-final-terraform" in runbook
    assert "Free the database's name" not in runbook  # another identifier: nothing to rename


def test_without_a_terraform_state_a_stateless_collision_is_deleted_by_hand(assembly, world, tmp_path, capsys):
    session, _ = world
    session.client("cloudwatch").put_metric_alarm(
        AlarmName="coder-production-clickhouse-cpu", MetricName="CPUUtilization", Namespace="AWS/ECS", Statistic="Average",
        Period=60, EvaluationPeriods=1, Threshold=80, ComparisonOperator="GreaterThanThreshold")
    _run(assembly, tmp_path, capsys, None)
    runbook = (tmp_path / "out" / "runbook.md").read_text()
    assert "aws cloudwatch delete-alarms --alarm-names coder-production-clickhouse-cpu" in runbook
    assert "aws ssm delete-parameter --name /coder-production/cluster-arn" in runbook


def test_every_aws_command_of_the_runbook_is_one_the_cli_knows(assembly, world, tmp_path, capsys):
    """Each `aws <service> <operation|wait ...>` line: an operation (or waiter) of that service, every option an input
    member of it (the CLI's kebab-case names), from botocore's own service models."""
    import shlex

    import botocore.session
    from botocore import xform_name

    _, state = world
    _run(assembly, tmp_path, capsys, state)
    runbook = (tmp_path / "out" / "runbook.md").read_text()
    commands = [line.split("$(", 1)[1].rsplit(")", 1)[0] if "=$(aws " in line else line
                for line in runbook.splitlines() if line.startswith("aws ") or "=$(aws " in line]
    session = botocore.session.get_session()
    checked = 0
    for command in commands:
        for part in command.split(" && "):
            words = shlex.split(part.split(" | ")[0].split("   #")[0])
            service, operation = words[1], words[2]
            if service == "s3":
                assert operation == "sync" and words[3].startswith("s3://") and words[4].startswith("s3://")
                continue
            model = session.get_service_model({"codepipeline": "codepipeline"}.get(service, service))
            options = [w[2:] for w in words[3:] if w.startswith("--")]
            if operation == "wait":
                waiters = session.get_waiter_model(model.service_name)
                names = {xform_name(n, "-") for n in waiters.waiter_names}
                assert words[3] in names, part
                operation_name = waiters.get_waiter(next(n for n in waiters.waiter_names if xform_name(n, "-") == words[3])).operation
                options = [w[2:] for w in words[4:] if w.startswith("--")]
            else:
                operation_name = next((n for n in model.operation_names if xform_name(n, "-") == operation), None)
                assert operation_name, part
            shape = model.operation_model(operation_name).input_shape
            members = {xform_name(m, "-") for m in shape.members}
            booleans = {xform_name(m, "-") for m, s in shape.members.items() if s.type_name == "boolean"}
            unknown = [o for o in options if o not in members | {"query", "output", "region"}
                       and not (o.startswith("no-") and o[3:] in booleans)]
            assert not unknown, (part, unknown)
            checked += 1
    assert checked >= 20


def test_an_empty_account_has_nothing_to_act_on(assembly, moto_endpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    code, out, _ = _run(assembly, tmp_path, capsys, None)
    assert code == 0, out
    assert out.startswith("production: 0 to act on (none)")
    assert not list((tmp_path / "out").glob("*.mapping.json"))


@pytest.mark.parametrize(("state", "args", "message"), [
    ({"version": 4, "terraform_version": "1.9.8", "resources": []}, (),
     "not `terraform show -json` output: it needs format_version and values.root_module (a raw .tfstate"),
    ({"format_version": "1.0"}, (), "not `terraform show -json` output"),
    (None, ("--environment", "qa"), "no environment 'qa' in the config: staging, production"),
])
def test_bad_input_exits_2_with_one_line(assembly, moto_endpoint, monkeypatch, tmp_path, capsys, state, args, message):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    code, out, err = _run(assembly, tmp_path, capsys, state, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_no_credentials_exits_2(assembly, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = _run(assembly, tmp_path, capsys, None)
    assert code == 2 and err.startswith("error: no AWS credentials")


# --- the restored database in the templates, and in the release review -----------------------------------------------


def test_a_restored_database_names_its_snapshot_and_none_of_what_it_inherits(variant, assembly):
    """Staging in the variant restores from a snapshot: DBSnapshotIdentifier, and none of the properties CloudFormation
    forbids beside it (the login, password, key and database name come from the snapshot)."""
    restored = variant.assembly.stack("Staging", "Data").one("AWS::RDS::DBInstance")
    assert restored["DBSnapshotIdentifier"] == VARIANT_SNAPSHOT
    assert not {"MasterUsername", "MasterUserPassword", "KmsKeyId", "DBName", "StorageEncrypted"} & set(restored)
    assert restored["DBInstanceIdentifier"] == "coder-staging-postgres"
    created = assembly.stack("Staging", "Data").one("AWS::RDS::DBInstance")
    assert "DBSnapshotIdentifier" not in created and "MasterUsername" in created


def test_the_release_review_blocks_a_snapshot_identifier_added_or_removed(variant, assembly):
    """Kept, nothing changes; removed (an empty instance) or added to a running one (a new instance): replaced."""
    with_snapshot = variant.assembly.stack("Staging", "Data").body
    without = assembly.stack("Staging", "Data").body
    (lid,) = [k for k, r in with_snapshot["Resources"].items() if r["Type"] == "AWS::RDS::DBInstance"]
    for old, new in ((with_snapshot, without), (without, with_snapshot)):
        found, _ = changes.diff_stack("Staging", "Staging-Data", old, new)
        (database,) = [c for c in found if c.logical_id == lid]
        assert database.replacement == "yes" and database.blocking, database
    found, _ = changes.diff_stack("Staging", "Staging-Data", with_snapshot, with_snapshot)
    assert not [c for c in found if c.logical_id == lid]
    other = json.loads(json.dumps(with_snapshot))  # another snapshot: a new instance restored, the old one deleted
    other["Resources"][lid]["Properties"]["DBSnapshotIdentifier"] = "coder-staging-postgres-another"
    found, _ = changes.diff_stack("Staging", "Staging-Data", with_snapshot, other)
    (database,) = [c for c in found if c.logical_id == lid]
    assert (database.properties, database.replacement, database.blocking) == (["DBSnapshotIdentifier"], "yes", True)


def test_a_lock_tables_new_key_schema_replaces_it(assembly):
    """CloudFormation replaces a table whose KeySchema changes (its reference; the schema lists no create-only key)."""
    data = assembly.stack("Production", "Data").body
    (lid,) = [k for k, r in data["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"]
    new = json.loads(json.dumps(data))
    new["Resources"][lid]["Properties"]["KeySchema"] = [{"AttributeName": "Id", "KeyType": "HASH"}]
    found, _ = changes.diff_stack("Production", "Production-Data", data, new)
    (table,) = [c for c in found if c.logical_id == lid]
    assert (table.properties, table.replacement, table.blocking) == (["KeySchema"], "yes", True)
