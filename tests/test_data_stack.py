"""DataStack, for both Stages: the seed's assertions plus names, encryption, retention and secret hygiene."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

LOCKED_IDS_FILE = Path(__file__).parent / "data" / "stateful_logical_ids.json"
STATEFUL_TYPES = (
    "AWS::RDS::DBInstance",
    "AWS::ElastiCache::ReplicationGroup",
    "AWS::EFS::FileSystem",
    "AWS::S3::Bucket",
    "AWS::DynamoDB::Table",
    "AWS::KMS::Key",
    "AWS::SecretsManager::Secret",
    "AWS::Backup::BackupVault",  # holds the recovery points
)
SEED_SECRETS = (
    "coder/database",
    "coder/oidc",
    "authentik/secret-key",
    "litellm/master-key",
    "litellm/anthropic-api-key",
    "litellm/database",
    "key-provisioner/secret",
    "langfuse/api-keys",
    "langfuse/auth",
    "langfuse/database",
    "langfuse/clickhouse",
)
EXTRA_SECRETS = ("rds/master", "redis/auth-token", "custom-llm/api-key", "langfuse/owner")


@pytest.fixture
def data(assembly, stage):
    return assembly.stack(stage, "Data")


# --- the seed's DataStack test, per stage ------------------------------------------------------------------------


def test_postgres_16_instance(data, env_config):
    db = data.one("AWS::RDS::DBInstance")
    assert db["Engine"] == "postgres"
    assert db["EngineVersion"] == "16"
    assert db["DBInstanceClass"] == f"db.{env_config.database.instance_class}"
    assert db["StorageEncrypted"] is True
    assert db["DeletionProtection"] is True


def test_postgres_storage_backups_and_insights(data, env_config):
    db = data.one("AWS::RDS::DBInstance")
    assert db["StorageType"] == "gp3"
    assert db["AllocatedStorage"] == str(env_config.database.allocated_storage_gb)
    assert db["MaxAllocatedStorage"] == env_config.database.max_allocated_storage_gb
    assert db["BackupRetentionPeriod"] == env_config.database.backup_retention_days
    assert db["EnablePerformanceInsights"] is True
    assert db["PubliclyAccessible"] is False
    assert db["MultiAZ"] is env_config.database.multi_az
    key = data.logical_id("/Data/DataKey/Resource")
    assert db["KmsKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    assert db["PerformanceInsightsKMSKeyId"] == {"Fn::GetAtt": [key, "Arn"]}


def test_production_sizes_are_the_seeds(assembly):
    db = assembly.stack("Production", "Data").one("AWS::RDS::DBInstance")
    assert (db["DBInstanceClass"], db["AllocatedStorage"], db["MaxAllocatedStorage"]) == ("db.r6g.large", "100", 500)
    assert db["BackupRetentionPeriod"] == 30
    redis = assembly.stack("Production", "Data").one("AWS::ElastiCache::ReplicationGroup")
    assert redis["CacheNodeType"] == "cache.r6g.large"
    assert redis["SnapshotRetentionLimit"] == 7


def test_postgres_requires_tls(data):
    params = data.one("AWS::RDS::DBParameterGroup")
    assert params["Family"] == "postgres16"
    assert params["Parameters"] == {"rds.force_ssl": "1"}


def test_postgres_in_data_subnets(data, assembly, stage):
    group = data.one("AWS::RDS::DBSubnetGroup")
    network = assembly.stack(stage, "Network")
    data_subnets = {
        lid for lid, r in network.of_type("AWS::EC2::Subnet").items() if "/PrivateDataSubnet" in r["Metadata"]["aws:cdk:path"]
    }
    referenced = {json.dumps(ref) for ref in group["SubnetIds"]}
    assert len(referenced) == 2
    assert all(any(lid in ref for lid in data_subnets) for ref in referenced)


def test_redis_replication_group(data):
    redis = data.one("AWS::ElastiCache::ReplicationGroup")
    assert redis["Engine"] == "redis"
    assert redis["EngineVersion"].startswith("7.")
    assert redis["AtRestEncryptionEnabled"] is True
    assert redis["TransitEncryptionEnabled"] is True
    assert redis["TransitEncryptionMode"] == "required"
    assert redis["AutomaticFailoverEnabled"] is True
    assert redis["MultiAZEnabled"] is True
    assert redis["NumCacheClusters"] == 2  # 1 primary + 1 replica
    assert redis["PreferredMaintenanceWindow"] == "sun:04:30-sun:05:30"
    assert redis["SnapshotWindow"] == "03:00-04:00"
    assert redis["Port"] == 6379


def test_redis_auth_token_is_a_dynamic_reference(data):
    token = json.dumps(data.one("AWS::ElastiCache::ReplicationGroup")["AuthToken"])
    assert "{{resolve:secretsmanager:" in token
    assert data.logical_id("/Data/Secrets/RedisAuthTokenSecret/Resource") in token


def test_redis_noeviction(data):
    params = data.one("AWS::ElastiCache::ParameterGroup")
    assert params["CacheParameterGroupFamily"] == "redis7"
    assert params["Properties"] == {"maxmemory-policy": "noeviction"}


def test_efs(data, env_config):
    """Two file systems (DESIGN "Tenants and trust"): the workspaces' (the seed's, same logical id) and the
    platform's (ClickHouse, Coder's configuration), each encrypted with the data key, a mount target per app subnet."""
    systems = {lid: fs["Properties"] for lid, fs in data.of_type("AWS::EFS::FileSystem").items()}
    assert sorted(systems) == ["FileSystem8A8E25C0", "PlatformFileSystem6B43D384"]
    for lid, fs in systems.items():
        assert fs["Encrypted"] is True and "DataKey" in json.dumps(fs["KmsKeyId"])
        assert fs["PerformanceMode"] == "generalPurpose"
        assert fs["ThroughputMode"] == "bursting"
        assert {"TransitionToIA": "AFTER_30_DAYS"} in fs["LifecyclePolicies"]
        targets = [t for t in data.props("AWS::EFS::MountTarget") if t["FileSystemId"] == {"Ref": lid}]
        assert len(targets) == 2
    names = {lid: {t["Key"]: t["Value"] for t in fs["FileSystemTags"]}["Name"] for lid, fs in systems.items()}
    assert names == {"FileSystem8A8E25C0": f"coder-{env_config.name}-workspaces",
                     "PlatformFileSystem6B43D384": f"coder-{env_config.name}-platform"}


def test_efs_mount_targets_in_app_subnets(data):
    for target in data.props("AWS::EFS::MountTarget"):
        assert "PrivateAppSubnet" in json.dumps(target["SubnetId"])


def test_five_buckets_named_per_environment(data, env_config):
    buckets = {p["BucketName"] for p in data.props("AWS::S3::Bucket")}
    suffix = f"{env_config.account}-{env_config.region}"
    assert buckets == {
        f"coder-{env_config.name}-{name}-{suffix}"
        for name in ("terraform-state", "backups", "artifacts", "langfuse-events", "langfuse-media")
    }
    assert all(len(name) <= 63 for name in buckets)


def test_bucket_security(data, assembly, stage):
    """SSE-KMS with the data key (the seed had SSE-S3: Terraform state and Langfuse traces hold sensitive data),
    S3 server access logs into the Network layer's log bucket under s3-access/<bucket>/."""
    data_key = data.logical_id("/Data/DataKey/Resource")
    for bucket in data.props("AWS::S3::Bucket"):
        rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule == {
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": [data_key, "Arn"]}},
        }
        logging = bucket["LoggingConfiguration"]
        assert logging["LogFilePrefix"] == f"s3-access/{bucket['BucketName']}/"
        target = logging["DestinationBucketName"]["Fn::GetStackOutput"]
        assert target["StackName"] == f"{stage}-Network" and "AccessLogsBucket" in target["OutputName"]
        assert bucket["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
    policies = data.props("AWS::S3::BucketPolicy")
    assert len(policies) == 5
    for policy in policies:
        conditions = [s.get("Condition", {}) for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
        assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions


def test_bucket_versioning_and_lifecycle(data, env_config):
    by_name = {p["BucketName"].removeprefix(f"{env_config.qualifier}-").removesuffix(
        f"-{env_config.account}-{env_config.region}"): p for p in data.props("AWS::S3::Bucket")}
    assert sorted(by_name) == ["artifacts", "backups", "langfuse-events", "langfuse-media", "terraform-state"]
    for name in ("terraform-state", "backups", "artifacts"):
        assert by_name[name]["VersioningConfiguration"] == {"Status": "Enabled"}
    for name in ("langfuse-events", "langfuse-media"):
        assert "VersioningConfiguration" not in by_name[name]
    backup_rules = by_name["backups"]["LifecycleConfiguration"]["Rules"]
    assert {"Id": "ExpireNoncurrentVersions", "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
            "Status": "Enabled"} in backup_rules


def test_lock_table(data, env_config):
    table = data.one("AWS::DynamoDB::Table")
    assert table["TableName"] == f"coder-{env_config.name}-terraform-locks"
    assert table["KeySchema"] == [{"AttributeName": "LockID", "KeyType": "HASH"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # Encrypted with the data key, as every other Data resource (not the AWS-owned key).
    assert table["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {
        "Fn::GetAtt": [data.logical_id("/Data/DataKey/Resource"), "Arn"]}}


# --- secrets --------------------------------------------------------------------------------------------------


def test_secret_names_per_environment(data, env_config):
    prefix = "prod" if env_config.is_production else "staging"
    names = {p["Name"] for p in data.props("AWS::SecretsManager::Secret")}
    assert names == {f"{prefix}/{name}" for name in SEED_SECRETS + EXTRA_SECRETS}


def test_secrets_encrypted_with_the_data_key(data):
    key = data.logical_id("/Data/DataKey/Resource")
    for secret in data.props("AWS::SecretsManager::Secret"):
        assert secret["KmsKeyId"] == {"Fn::GetAtt": [key, "Arn"]}, secret["Name"]


def test_no_secret_value_in_any_template(assembly):
    for template in assembly.templates.values():
        for lid, resource in template.of_type("AWS::SecretsManager::Secret").items():
            assert "SecretString" not in resource["Properties"], f"{template.stack_name}/{lid} has a literal value"
        text = json.dumps(template.body)
        assert not re.search(r"\bsk-[A-Za-z0-9]{20,}", text), f"a key-like literal in {template.stack_name}"


def test_database_logins_generate_only_the_password(data, env_config):
    by_name = {p["Name"]: p for p in data.props("AWS::SecretsManager::Secret")}
    for app in ("coder", "litellm", "langfuse"):
        generator = by_name[f"{env_config.secret_prefix}/{app}/database"]["GenerateSecretString"]
        assert generator["GenerateStringKey"] == "password"
        assert generator["ExcludePunctuation"] is True  # safe inside a connection URL
        # The template is a Fn::Join of literal JSON and the instance's endpoint attributes.
        parts = generator["SecretStringTemplate"]["Fn::Join"][1]
        rendered = json.loads("".join(p if isinstance(p, str) else p["Fn::GetAtt"][1] for p in parts))
        assert rendered == {
            "engine": "postgres",
            "host": "Endpoint.Address",
            "port": "Endpoint.Port",
            "dbname": app,
            "username": app,
        }


def test_formatted_secrets_fields(data, env_config):
    fields = {}
    secrets = {lid: p["Name"] for lid, p in ((lid, r["Properties"]) for lid, r in data.of_type("AWS::SecretsManager::Secret").items())}
    for props in data.props("Custom::SecretFields"):
        if "Fields" in props:  # the others are operator-supplied secrets' placeholders
            fields[secrets[props["SecretId"]["Ref"]]] = props["Fields"]
    prefix = env_config.secret_prefix
    assert fields[f"{prefix}/litellm/master-key"]["master_key"] == {"Prefix": "sk-", "Length": 48, "Alphabet": "alnum"}
    assert fields[f"{prefix}/litellm/master-key"]["salt_key"]["Prefix"] == "sk-"
    assert fields[f"{prefix}/langfuse/api-keys"]["public_key"]["Prefix"] == "pk-lf-"
    assert fields[f"{prefix}/langfuse/api-keys"]["secret_key"]["Prefix"] == "sk-lf-"
    assert fields[f"{prefix}/langfuse/auth"]["encryption_key"] == {"Prefix": "", "Length": 64, "Alphabet": "hex"}


def test_secret_initializer_can_touch_only_its_secrets(data):
    (role_policy,) = [
        r["Properties"] for r in data.of_type("AWS::IAM::Policy").values()
        if "SecretFieldsInitializer" in r["Metadata"]["aws:cdk:path"]
    ]
    formatted = {
        data.logical_id(f"/Data/Secrets/{cid}/Secret/Resource") for cid in ("LiteLLMMasterKey", "LangfuseApiKeys", "LangfuseAuth")
    } | {
        data.logical_id(f"/Data/Secrets/{cid}/Resource")  # operator-supplied: placeholders
        for cid in ("CoderOidcSecret", "AnthropicApiKeySecret", "CustomLlmApiKeySecret")
    }
    for statement in role_policy["PolicyDocument"]["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert "*" not in resources, statement
        if any(a.startswith("secretsmanager:") for a in statement["Action"]):
            assert {r["Ref"] for r in resources} <= formatted


# --- one database and login per app (AppDatabases) -------------------------------------------------------------


def test_app_databases_custom_resource(data):
    (resource_id,) = data.of_type("Custom::AppDatabases")
    resource = data.resources[resource_id]
    props = resource["Properties"]
    apps = {app: data.logical_id(f"/Data/Secrets/{app.capitalize()}DatabaseSecret/Resource") for app in ("coder", "litellm", "langfuse")}
    assert props["AppSecretArns"] == {app: {"Ref": lid} for app, lid in apps.items()}
    assert props["MasterSecretArn"] == {"Ref": data.logical_id("/Data/Database/PostgresMasterSecret/Resource")}
    postgres = data.logical_id("/Data/Database/Postgres/Resource")
    assert props["Endpoint"] == {"Fn::GetAtt": [postgres, "Endpoint.Address"]}
    assert re.fullmatch(r"[0-9a-f]{16}", props["HandlerVersion"])
    assert postgres in resource["DependsOn"]  # the instance accepts connections before the first run
    function = data.logical_id("/Data/AppDatabases/Function/Resource")
    assert props["ServiceToken"] == {"Fn::GetAtt": [function, "Arn"]}


def test_app_databases_function_runs_in_the_vpc_with_its_own_group(data, assembly, stage):
    function = data.resources[data.logical_id("/Data/AppDatabases/Function/Resource")]["Properties"]
    assert function["Runtime"] == "python3.14" and function["Handler"] == "index.handler"
    vpc = function["VpcConfig"]
    assert "DbBootstrapSecurityGroup" in json.dumps(vpc["SecurityGroupIds"])
    assert len(vpc["SubnetIds"]) == 2 and all("PrivateAppSubnet" in json.dumps(s) for s in vpc["SubnetIds"])
    assert set(function["Environment"]["Variables"]) == {"MASTER_SECRET_ARN", "APP_SECRET_ARNS"}
    # The asset holds the handler, the shared response module and the pinned driver, nothing from the repo else.
    assets = json.loads(next(data.path.parent.glob(f"{data.path.name.split('.')[0]}.assets.json")).read_text())
    code_hash = function["Code"]["S3Key"].removesuffix(".zip")
    folder = data.path.parent / assets["files"][code_hash]["source"]["path"]
    names = {p.name for p in folder.iterdir()}
    assert {"index.py", "bootstrap.py", "cfn_response.py", "pg8000", "scramp"} <= names
    assert "requirements.txt" not in names and ".installed" not in names


def test_app_databases_function_permissions(data):
    (policy,) = [
        r["Properties"] for r in data.of_type("AWS::IAM::Policy").values()
        if "/AppDatabases/" in r["Metadata"]["aws:cdk:path"]
    ]
    statements = policy["PolicyDocument"]["Statement"]
    app_secrets = {data.logical_id(f"/Data/Secrets/{a}DatabaseSecret/Resource") for a in ("Coder", "Litellm", "Langfuse")}
    master = data.logical_id("/Data/Database/PostgresMasterSecret/Resource")
    reads = [s for s in statements if s["Action"] == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]]
    assert {r["Ref"] for s in reads for r in s["Resource"]} == app_secrets | {master}
    (write,) = [s for s in statements if s.get("Sid") == "WriteConnectionUrls"]
    assert write["Action"] == "secretsmanager:PutSecretValue"
    assert {r["Ref"] for r in write["Resource"]} == app_secrets  # never the master login
    (encrypt,) = [s for s in statements if s.get("Sid") == "EncryptNewSecretVersions"]
    assert encrypt["Action"] == "kms:GenerateDataKey" and "secretsmanager." in json.dumps(encrypt["Condition"])
    assert all(s["Resource"] != "*" for s in statements)


# --- keeping data ---------------------------------------------------------------------------------------------


def test_stateful_resources_survive_delete_and_replace(data):
    for resource_type in STATEFUL_TYPES:
        for lid, resource in data.of_type(resource_type).items():
            expected = "Snapshot" if resource_type in ("AWS::RDS::DBInstance", "AWS::ElastiCache::ReplicationGroup") else "Retain"
            assert resource.get("DeletionPolicy") == expected, f"{lid} DeletionPolicy"
            assert resource.get("UpdateReplacePolicy") == expected, f"{lid} UpdateReplacePolicy"


def test_production_data_stack_has_termination_protection(assembly):
    manifests = {}
    for stage in ("Staging", "Production"):
        directory = assembly.stack(stage, "Data").path.parent
        manifest = json.loads((directory / "manifest.json").read_text())
        (props,) = [a["properties"] for a in manifest["artifacts"].values()
                    if a["type"] == "aws:cloudformation:stack" and a.get("displayName", "").endswith("/Data")]
        manifests[stage] = props.get("terminationProtection", False)
    assert manifests == {"Staging": False, "Production": True}


def test_stateful_logical_ids_are_locked(assembly):
    """Renaming a stateful construct would replace the resource (a new, empty database). The committed list makes
    such a rename fail CI; update tests/data/stateful_logical_ids.json only for a deliberate, planned migration."""
    locked = json.loads(LOCKED_IDS_FILE.read_text())
    for stage in ("Staging", "Production"):
        data = assembly.stack(stage, "Data")
        actual = {t: sorted(data.of_type(t)) for t in STATEFUL_TYPES}
        assert actual == locked, f"{stage}-Data stateful logical ids changed"


def test_staging_and_production_share_logical_ids(assembly):
    """The same construct ids in both; production adds only its termination protection."""
    staging, production = assembly.stack("Staging", "Data"), assembly.stack("Production", "Data")
    extra = set(production.resources) - set(staging.resources)
    assert set(staging.resources) <= set(production.resources)
    assert extra and all(lid.startswith("TerminationProtection") for lid in extra)


def test_the_master_secret_rotates_only_once_the_instance_exists(assembly):
    """Secrets Manager rotates when the schedule is created: after the attachment (the instance created or restored
    from a snapshot and named in the secret), never against an instance still being created."""
    for stage in ("Staging", "Production"):
        data = assembly.stack(stage, "Data")
        (rotation,) = [r for r in data.resources.values() if r["Type"] == "AWS::SecretsManager::RotationSchedule"]
        (attachment,) = [lid for lid, r in data.resources.items() if r["Type"] == "AWS::SecretsManager::SecretTargetAttachment"]
        assert attachment in rotation.get("DependsOn", [])
        assert data.resources[attachment]["Properties"]["TargetId"] == {"Ref": data.logical_id("/Data/Database/Postgres/Resource")}
