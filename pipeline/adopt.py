"""Taking over the running Terraform deployment of an environment without losing its data.

`python -m pipeline.adopt --environment NAME [--terraform-state FILE] [--out DIR] [--assembly cdk.out]`
(`make adopt ENV=NAME [TF_STATE=FILE]`), read-only against the environment's account (its credentials, or the CDK
bootstrap's lookup role when the credentials are another account's):

1. Every physical name the environment's stacks fix (from the synthesized assembly), and whether it already exists.
2. What to do with each: *import* (CloudFormation resource import; every property that differs is listed, and one that
   CloudFormation can only set when it creates the resource blocks it: the first deploy would replace it), *restore*
   (the database, from the snapshot `database.snapshot_identifier` names), *copy* (file systems and buckets whose data
   moves), or *leave to Terraform* (stateless: Terraform destroys it, before the first deploy when its name is needed).
3. Files in DIR (default build/adopt/<environment>): per stack with imports, `<stack>.mapping.json` (the format `cdk
   import --resource-mapping` reads), `<stack>.import.json` and `<stack>.resources-to-import.json` (an IMPORT change
   set that creates the stack with those resources alone: `cdk import` cannot, their definitions refer to resources
   the stack creates); from `terraform show -json` output, `terraform-removed.tf` (Terraform forgets what the stacks
   adopt, never destroying it) and the Terraform resources with no counterpart; `collisions.json`; `runbook.md`.

Exit codes: 0 nothing collides and no data moves, 1 collisions or data to act on (written), 2 could not run (one line).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from config.loader import ConfigError, load_config
from config.model import AppConfig, EnvironmentConfig
from pipeline.assembly import AssemblyError, read_json, stage_name
from pipeline.changes import _create_only, _references

QUALIFIER = "hnb659fds"
IMPORT = "import"
RESTORE = "restore"
COPY = "copy"
LEAVE = "leave to Terraform"
KEEP = "keep"  # Terraform forgets it and nobody deletes it: it encrypts data that moves

# The types whose names the stacks fix: (the property holding the name, whether CloudFormation can import it, whether
# it holds data that must not be lost). Import support: CloudFormation's "Resource type support" table.
TYPES: dict[str, tuple[str, bool, bool]] = {
    "AWS::RDS::DBInstance": ("DBInstanceIdentifier", True, True),
    "AWS::SecretsManager::Secret": ("Name", True, True),
    "AWS::S3::Bucket": ("BucketName", True, True),
    "AWS::DynamoDB::Table": ("TableName", True, True),
    "AWS::Logs::LogGroup": ("LogGroupName", True, True),
    "AWS::Backup::BackupVault": ("BackupVaultName", True, True),
    "AWS::SSM::Parameter": ("Name", True, False),
    "AWS::CloudWatch::Alarm": ("AlarmName", True, False),
    "AWS::CloudWatch::Dashboard": ("DashboardName", True, False),
    "AWS::SNS::Topic": ("TopicName", True, False),
    "AWS::ECS::Cluster": ("ClusterName", True, False),
    "AWS::IAM::Role": ("RoleName", True, False),
    "AWS::KMS::Alias": ("AliasName", True, False),
}

# Terraform's resource types: the CloudFormation type of the counterpart, and the attribute holding its name.
TERRAFORM_TYPES: dict[str, tuple[str, str | None]] = {
    "aws_db_instance": ("AWS::RDS::DBInstance", "identifier"),
    "aws_secretsmanager_secret": ("AWS::SecretsManager::Secret", "name"),
    "aws_s3_bucket": ("AWS::S3::Bucket", "bucket"),
    "aws_dynamodb_table": ("AWS::DynamoDB::Table", "name"),
    "aws_cloudwatch_log_group": ("AWS::Logs::LogGroup", "name"),
    "aws_backup_vault": ("AWS::Backup::BackupVault", "name"),
    "aws_ssm_parameter": ("AWS::SSM::Parameter", "name"),
    "aws_cloudwatch_metric_alarm": ("AWS::CloudWatch::Alarm", "alarm_name"),
    "aws_cloudwatch_dashboard": ("AWS::CloudWatch::Dashboard", "dashboard_name"),
    "aws_sns_topic": ("AWS::SNS::Topic", "name"),
    "aws_ecs_cluster": ("AWS::ECS::Cluster", "name"),
    "aws_iam_role": ("AWS::IAM::Role", "name"),
    "aws_kms_alias": ("AWS::KMS::Alias", "name"),
    "aws_efs_file_system": ("AWS::EFS::FileSystem", None),
    "aws_kms_key": ("AWS::KMS::Key", None),
}


class AdoptError(Exception):
    """Could not run: said in one line, exit 2."""


@dataclass(frozen=True)
class Named:
    """A resource of the environment's stacks with a fixed physical name."""

    stack: str  # the stack's name (Production-Data)
    path: str  # its construct path in the stage's assembly (CoderPipeline/Production/Data): what `cdk import` selects
    logical_id: str
    type: str
    name: str
    resource: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class TerraformResource:
    address: str
    type: str
    name: str | None  # the physical name, where the type has one
    values: dict = field(repr=False, compare=False)

    @property
    def removable_by_block(self) -> bool:
        """A `removed` block names a resource without instance keys; one with count/for_each is `terraform state rm`."""
        return "[" not in self.address


@dataclass
class Finding:
    action: str
    what: str  # one line: the resource, on both sides where there are two
    stack: str | None = None
    logical_id: str | None = None
    type: str | None = None
    name: str | None = None
    identifier: dict = field(default_factory=dict)  # the import identifier (cdk import's resource mapping)
    differences: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)  # differences that must be changed before the import
    notes: list[str] = field(default_factory=list)
    terraform: list[str] = field(default_factory=list)  # Terraform addresses it stands for


# --- the stacks ------------------------------------------------------------------------------------------------------


def stage_directory(assembly: Path, environment: EnvironmentConfig) -> Path:
    manifest = read_json(assembly / "manifest.json")
    for artifact in manifest.get("artifacts", {}).values():
        if artifact.get("type") == "cdk:cloud-assembly" and stage_name(artifact) == environment.stage_id:
            return assembly / artifact["properties"]["directoryName"]
    raise AdoptError(f"{assembly} has no stage {environment.stage_id}: synthesize with this config first (make synth)")


def stacks(stage: Path) -> list[tuple[str, str, dict]]:
    """(stack name, construct path, template) of a stage's assembly, in its deploy order."""
    manifest = read_json(stage / "manifest.json")
    found = []
    for artifact_id, artifact in manifest.get("artifacts", {}).items():
        if artifact.get("type") == "aws:cloudformation:stack":
            props = artifact["properties"]
            found.append((props.get("stackName", artifact_id), artifact.get("displayName", artifact_id),
                          read_json(stage / props["templateFile"])))
    return found


def named_resources(stage: Path) -> list[Named]:
    found = []
    for stack, path, template in stacks(stage):
        for logical_id, resource in template.get("Resources", {}).items():
            kind = resource.get("Type")
            if kind in TYPES:
                name = resource.get("Properties", {}).get(TYPES[kind][0])
                if isinstance(name, str):
                    found.append(Named(stack, path, logical_id, kind, name, resource))
    return found


# --- the account -----------------------------------------------------------------------------------------------------

# Each type's reader: the resource's import identifier and its properties as CloudFormation names them, or None when
# no resource of that name exists. Read-only calls the bootstrap's lookup role (ReadOnlyAccess) may make.
Reader = Callable[[object, str], "tuple[dict, dict] | None"]


# What each service answers for a name that does not exist (anything else, AccessDenied included, is an error).
MISSING_CODES = frozenset({"ResourceNotFoundException", "ParameterNotFound", "NoSuchEntity", "DBInstanceNotFound",
                           "DBSnapshotNotFound", "NotFound", "404", "NoSuchBucket", "ResourceNotFound",
                           "ClusterNotFoundException", "ResourceNotFoundFault"})


def _missing(error: Exception) -> bool:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "") in MISSING_CODES


def _read_bucket(session, name: str):
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=name)
    except Exception as error:
        if _missing(error):
            return None
        if getattr(error, "response", {}).get("Error", {}).get("Code") == "403":  # the name is another account's
            return {"BucketName": name}, {"BucketName": name, "Owner": "another account"}
        raise
    status = s3.get_bucket_versioning(Bucket=name).get("Status")
    props = {"BucketName": name, "VersioningConfiguration": {"Status": status} if status else None}
    return {"BucketName": name}, props


def _read_secret(session, name: str):
    client = session.client("secretsmanager")
    try:
        secret = client.describe_secret(SecretId=name)
    except Exception as error:
        if _missing(error):
            return None
        raise
    if secret.get("Name") != name:  # a secret found by a partial ARN of another name
        return None
    return {"Id": secret["ARN"]}, {"Name": name, "Description": secret.get("Description"), "KmsKeyId": secret.get("KmsKeyId")}


def _read_table(session, name: str):
    client = session.client("dynamodb")
    try:
        table = client.describe_table(TableName=name)["Table"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    mode = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    return {"TableName": name}, {"TableName": name, "KeySchema": table["KeySchema"],
                                 "AttributeDefinitions": table["AttributeDefinitions"], "BillingMode": mode}


def _read_log_group(session, name: str):
    groups = session.client("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    group = next((g for g in groups if g["logGroupName"] == name), None)
    if group is None:
        return None
    return {"LogGroupName": name}, {"LogGroupName": name, "RetentionInDays": group.get("retentionInDays"),
                                    "KmsKeyId": group.get("kmsKeyId")}


def _read_vault(session, name: str):
    try:
        vault = session.client("backup").describe_backup_vault(BackupVaultName=name)
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"BackupVaultName": name}, {"BackupVaultName": name, "EncryptionKeyArn": vault.get("EncryptionKeyArn")}


def _read_parameter(session, name: str):
    try:
        parameter = session.client("ssm").get_parameter(Name=name)["Parameter"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"Name": name}, {"Name": name, "Type": parameter["Type"], "Value": parameter["Value"]}


def _read_alarm(session, name: str):
    alarms = session.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    if not alarms:
        return None
    alarm = alarms[0]
    keys = ("MetricName", "Namespace", "Threshold", "ComparisonOperator", "EvaluationPeriods", "Statistic")
    return {"AlarmName": name}, {"AlarmName": name, **{k: alarm.get(k) for k in keys}}


def _read_dashboard(session, name: str):
    try:
        session.client("cloudwatch").get_dashboard(DashboardName=name)
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"DashboardName": name}, {"DashboardName": name}


def _read_topic(session, name: str):
    client = session.client("sns")
    arn = f"arn:{_partition(session)}:sns:{session.region_name}:{_account(session)}:{name}"
    try:
        attributes = client.get_topic_attributes(TopicArn=arn)["Attributes"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"TopicArn": arn}, {"TopicName": name, "DisplayName": attributes.get("DisplayName"),
                               "KmsMasterKeyId": attributes.get("KmsMasterKeyId")}


def _read_cluster(session, name: str):
    clusters = session.client("ecs").describe_clusters(clusters=[name])["clusters"]
    if not [c for c in clusters if c.get("status") == "ACTIVE"]:
        return None
    return {"ClusterName": name}, {"ClusterName": name}


def _read_role(session, name: str):
    try:
        role = session.client("iam").get_role(RoleName=name)["Role"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"RoleName": name}, {"RoleName": name, "AssumeRolePolicyDocument": role.get("AssumeRolePolicyDocument")}


def _read_alias(session, name: str):
    for page in session.client("kms").get_paginator("list_aliases").paginate():
        for alias in page["Aliases"]:
            if alias["AliasName"] == name:
                return {"AliasName": name}, {"AliasName": name, "TargetKeyId": alias.get("TargetKeyId")}
    return None


def _read_instance(session, name: str):
    try:
        (instance,) = session.client("rds").describe_db_instances(DBInstanceIdentifier=name)["DBInstances"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    return {"DBInstanceIdentifier": name}, {
        "DBInstanceIdentifier": name, "Engine": instance.get("Engine"), "EngineVersion": instance.get("EngineVersion"),
        "StorageEncrypted": instance.get("StorageEncrypted"), "KmsKeyId": instance.get("KmsKeyId")}


READERS: dict[str, Callable] = {
    "AWS::S3::Bucket": _read_bucket, "AWS::SecretsManager::Secret": _read_secret, "AWS::DynamoDB::Table": _read_table,
    "AWS::Logs::LogGroup": _read_log_group, "AWS::Backup::BackupVault": _read_vault, "AWS::SSM::Parameter": _read_parameter,
    "AWS::CloudWatch::Alarm": _read_alarm, "AWS::CloudWatch::Dashboard": _read_dashboard, "AWS::SNS::Topic": _read_topic,
    "AWS::ECS::Cluster": _read_cluster, "AWS::IAM::Role": _read_role, "AWS::KMS::Alias": _read_alias,
    "AWS::RDS::DBInstance": _read_instance,
}


def _account(session) -> str:
    return session.client("sts").get_caller_identity()["Account"]


def _partition(session) -> str:
    return "aws-cn" if session.region_name.startswith("cn-") else "aws-us-gov" if session.region_name.startswith("us-gov") else "aws"


def environment_session(environment: EnvironmentConfig, session_factory=None):
    """A session in the environment's account and region: the caller's, or through the bootstrap's lookup role."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    make = session_factory or boto3.session.Session
    session = make(region_name=environment.region)
    try:
        account = _account(session)
        if account == environment.account:
            return session
        role = f"arn:aws:iam::{environment.account}:role/cdk-{QUALIFIER}-lookup-role-{environment.account}-{environment.region}"
        credentials = session.client("sts").assume_role(RoleArn=role, RoleSessionName="adopt")["Credentials"]
    except NoCredentialsError:
        raise AdoptError("no AWS credentials: run with the environment's account credentials, or the pipeline "
                         "account's (through the CDK bootstrap's lookup role)") from None
    except (ClientError, BotoCoreError) as error:
        raise AdoptError(f"cannot read account {environment.account}: {error}") from None
    return make(aws_access_key_id=credentials["AccessKeyId"], aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"], region_name=environment.region)


# --- Terraform -------------------------------------------------------------------------------------------------------


def read_terraform(path: Path) -> list[TerraformResource]:
    """The managed resources of `terraform show -json` output (root module and child modules)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AdoptError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(document, dict) or "format_version" not in document or not isinstance(
            document.get("values", {}).get("root_module") if isinstance(document.get("values"), dict) else None, dict):
        hint = " (a raw .tfstate: give `terraform show -json` output instead)" if isinstance(document, dict) and \
            "resources" in document and "version" in document else ""
        raise AdoptError(f"{path}: not `terraform show -json` output: it needs format_version and "
                         f"values.root_module{hint}")
    found = []

    def walk(module: dict) -> None:
        for resource in module.get("resources", []):
            if resource.get("mode", "managed") != "managed":
                continue
            kind = resource.get("type", "")
            values = resource.get("values") or {}
            attribute = TERRAFORM_TYPES.get(kind, (None, None))[1]
            name = values.get(attribute) if attribute else None
            found.append(TerraformResource(resource["address"], kind, name if isinstance(name, str) else None, values))
        for child in module.get("child_modules", []):
            walk(child)

    walk(document["values"]["root_module"])
    return found


def _residue(name: str, environment: EnvironmentConfig, project: str) -> str:
    """What a bucket's name says it is for, without project, environment, account and region."""
    text = name.removesuffix(f"-{environment.account}-{environment.region}").removesuffix(f"-{environment.region}")
    text = text.removesuffix(f"-{environment.account}")
    for prefix in (f"{environment.qualifier}-", f"{project}-{environment.name}-", f"{project}-"):
        text = text.removeprefix(prefix)
    return text


# --- deciding --------------------------------------------------------------------------------------------------------


def _literal(value) -> bool:
    """A template value that holds no intrinsic function."""
    if isinstance(value, dict):
        return not any(key == "Ref" or key.startswith("Fn::") for key in value) and all(map(_literal, value.values()))
    if isinstance(value, list):
        return all(map(_literal, value))
    return True


def _same(template_value, live_value) -> bool:
    if isinstance(template_value, (int, float)) or isinstance(live_value, (int, float)):
        try:
            return float(template_value) == float(live_value)
        except (TypeError, ValueError):
            return False
    if isinstance(template_value, list) and isinstance(live_value, list):
        key = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731 - order does not matter in these lists
        return sorted(map(key, template_value)) == sorted(map(key, live_value))
    return template_value == live_value


def differences(named: Named, live: dict, region: str) -> tuple[list[str], list[str]]:
    """(every difference, those CloudFormation can only settle by replacing the resource) between the template and
    the live resource, on the properties the reader sees."""
    props = named.resource.get("Properties", {})
    create_only = _create_only(named.type)
    found, blocking = [], []
    for key, live_value in sorted(live.items()):
        if key not in props:
            if live_value not in (None, "", [], {}):
                found.append(f"{key}: live {json.dumps(live_value, default=str)}, the template sets none")
            continue
        value = props[key]
        if not _literal(value):
            if live_value not in (None, ""):
                line = f"{key}: live {json.dumps(live_value, default=str)}, the template's comes from the stack"
                found.append(line)
                if key in create_only:
                    blocking.append(line)
            continue
        if not _same(value, live_value):
            line = f"{key}: live {json.dumps(live_value, default=str)}, template {json.dumps(value)}"
            found.append(line)
            if key in create_only:
                blocking.append(line)
    return found, blocking


def decide(named: Named, live: tuple[dict, dict], environment: EnvironmentConfig, region: str,
           snapshot: dict | None) -> Finding:
    identifier, properties = live
    finding = Finding(IMPORT, f"{named.stack}/{named.logical_id} ({named.type} {named.name})", named.stack,
                      named.logical_id, named.type, named.name)
    _, importable, stateful = TYPES[named.type]
    if named.type == "AWS::RDS::DBInstance":
        finding.action = RESTORE
        wanted = environment.database.snapshot_identifier
        if not wanted:
            finding.blocking.append("database.snapshot_identifier is empty: the first deploy would create an empty "
                                    "database; take the final snapshot (runbook step 1) and set it")
        elif snapshot is None:
            finding.blocking.append(f"snapshot {wanted} (database.snapshot_identifier) not found in the account")
        elif not snapshot.get("Encrypted"):
            finding.blocking.append(f"snapshot {wanted} is not encrypted: copy it encrypted (aws rds copy-db-snapshot "
                                    "--kms-key-id ...) and name the copy")
        else:
            finding.notes.append(f"restored from {wanted} ({snapshot.get('Engine')} {snapshot.get('EngineVersion')}, "
                                 f"taken {snapshot.get('SnapshotCreateTime')})")
            major = str(snapshot.get("EngineVersion", "")).split(".")[0]
            wanted_major = str(named.resource.get("Properties", {}).get("EngineVersion", "")).split(".")[0]
            if major and wanted_major and major != wanted_major:
                finding.blocking.append(f"the snapshot is PostgreSQL {major}, the template {wanted_major}: upgrade the "
                                        "Terraform database (or a restored copy) to it and snapshot that")
        finding.notes.append(f"the running instance {named.name} keeps its name until the runbook renames it")
        return finding
    found, blocking = differences(named, properties, region)
    if properties.get("Owner") == "another account":
        finding.blocking.append("the bucket name belongs to another account: choose another project name")
        return finding
    if importable and stateful:
        finding.identifier = identifier
        finding.differences, finding.blocking = found, blocking
        if named.resource.get("DeletionPolicy") not in ("Retain", "RetainExceptOnCreate"):
            finding.notes.append("the template's DeletionPolicy is not Retain: the import template sets Retain")
        return finding
    finding.action = LEAVE
    finding.differences = found
    finding.notes.append("stateless: Terraform destroys it during the freeze, before the first deploy needs its name; "
                         "the stack creates it anew")
    return finding


def _snapshot(session, identifier: str) -> dict | None:
    if not identifier:
        return None
    client = session.client("rds")
    try:
        key = "DBSnapshotIdentifier"
        snapshots = client.describe_db_snapshots(**{key: identifier})["DBSnapshots"]
    except Exception as error:
        if _missing(error):
            return None
        raise
    return snapshots[0] if snapshots else None


def import_template(template: dict, imports: dict[str, dict]) -> dict:
    """The template of an IMPORT change set that creates the stack holding `imports` ({logical id: live properties})
    alone: each resource as the assembly defines it, but a property that refers to a resource the stack creates later
    takes the live value (or is left out when the live resource has none), and Retain. The first pipeline deploy then
    updates them to the template."""
    resources = {}
    for logical_id, live in imports.items():
        resource = copy.deepcopy(template["Resources"][logical_id])
        props = resource.get("Properties", {})
        for key in list(props):
            if _references(props[key]) - set(imports):
                if live.get(key) not in (None, ""):
                    props[key] = live[key]
                else:
                    del props[key]
        depends = resource.get("DependsOn")
        if depends is not None:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d in imports]
            if kept:
                resource["DependsOn"] = kept
            else:
                resource.pop("DependsOn")
        resource["DeletionPolicy"] = "Retain"
        resource["UpdateReplacePolicy"] = "Retain"
        resources[logical_id] = resource
    return {"AWSTemplateFormatVersion": "2010-09-09",
            "Description": "Resources of the Terraform deployment imported before the stack's first deploy (make adopt)",
            "Resources": resources}


@dataclass
class Result:
    environment: str
    findings: list[Finding]
    unmatched: list[str]  # Terraform resources with no counterpart
    stack_names: dict[str, str]  # stack name -> construct path

    @property
    def acting(self) -> bool:
        return bool(self.findings)


def adopt(config: AppConfig, environment: EnvironmentConfig, stage: Path, session,
          terraform: list[TerraformResource] | None = None) -> tuple[Result, dict[str, dict], dict[str, dict]]:
    """The findings, and per stack the imports' live properties and templates."""
    named = named_resources(stage)
    templates = {name: template for name, _, template in stacks(stage)}
    paths = {name: path for name, path, _ in stacks(stage)}
    findings: list[Finding] = []
    imports: dict[str, dict[str, dict]] = {}
    snapshot = _snapshot(session, environment.database.snapshot_identifier)
    by_name = {(n.type, n.name): n for n in named}
    for item in named:
        live = READERS[item.type](session, item.name)
        if live is None:
            continue
        finding = decide(item, live, environment, environment.region, snapshot)
        findings.append(finding)
        if finding.action == IMPORT:
            imports.setdefault(item.stack, {})[item.logical_id] = live[1]
    unmatched = []
    if terraform is not None:
        for resource in terraform:
            kind, _ = TERRAFORM_TYPES.get(resource.type, (None, None))
            counterpart = by_name.get((kind, resource.name)) if kind and resource.name else None
            if counterpart is not None:
                for finding in findings:
                    if (finding.stack, finding.logical_id) == (counterpart.stack, counterpart.logical_id):
                        finding.terraform.append(resource.address)
                if not any((f.stack, f.logical_id) == (counterpart.stack, counterpart.logical_id) for f in findings):
                    unmatched.append(f"{resource.address}: its name {resource.name} is the stack's "
                                     f"{counterpart.stack}/{counterpart.logical_id}, but no such resource exists")
                continue
            if resource.type == "aws_db_instance":
                target = next((n for n in named if n.type == "AWS::RDS::DBInstance"), None)
                findings.append(Finding(RESTORE, f"{resource.address} ({resource.name}) -> {target.stack}/{target.logical_id}"
                                        if target else resource.address, target.stack if target else None,
                                        target.logical_id if target else None, "AWS::RDS::DBInstance", resource.name,
                                        notes=["another identifier than the stack's: restored from its final snapshot"],
                                        terraform=[resource.address]))
            elif resource.type == "aws_efs_file_system":
                efs = _workspaces_file_system(templates)
                source = str(resource.values.get("id", ""))
                finding = Finding(COPY, f"{resource.address} ({source}) -> {efs[0]}/{efs[1]} (the workspaces' file "
                                  "system)", efs[0], efs[1], "AWS::EFS::FileSystem", source, terraform=[resource.address],
                                  notes=["home directories, and /clickhouse, which ClickHouse's first start moves to "
                                         "the platform file system (move-data.sh), copied with AWS DataSync before "
                                         "any service starts"])
                finding.identifier = _mount_point(session, source, finding)
                if environment.platform_data.old_clickhouse_data != "copy":
                    finding.blocking.append(f"platform_data.old_clickhouse_data is "
                                            f"{environment.platform_data.old_clickhouse_data!r}: set \"copy\" so that "
                                            "ClickHouse's first start moves the copied /clickhouse")
                findings.append(finding)
            elif resource.type == "aws_s3_bucket" and resource.name:
                residue = _residue(resource.name, environment, config.project.name)
                target = next((n for n in named if n.type == "AWS::S3::Bucket"
                               and _residue(n.name, environment, config.project.name) == residue), None)
                if target is None:
                    unmatched.append(f"{resource.address} (bucket {resource.name}): no bucket of the stacks holds "
                                     f"{residue!r}; Terraform keeps it until you decide")
                    continue
                findings.append(Finding(COPY, f"{resource.address} ({resource.name}) -> {target.stack}/"
                                        f"{target.logical_id} ({target.name})", target.stack, target.logical_id,
                                        "AWS::S3::Bucket", resource.name, terraform=[resource.address],
                                        notes=[f"aws s3 sync s3://{resource.name} s3://{target.name}"]))
            elif resource.type == "aws_kms_key":
                findings.append(Finding(KEEP, f"{resource.address} ({resource.values.get('arn', resource.values.get('id', '?'))})",
                                        type="AWS::KMS::Key", name=resource.values.get("id"), terraform=[resource.address],
                                        notes=["it encrypts data that moves or stays (the final snapshot and the "
                                               "restored database, the old buckets and file system): Terraform forgets "
                                               "it, nobody schedules its deletion while any of that is kept"]))
            else:
                unmatched.append(f"{resource.address} ({resource.type}): no counterpart in the stacks; Terraform "
                                 "destroys it after the cutover")
    return Result(environment.name, findings, unmatched, paths), imports, templates


def _mount_point(session, file_system: str, finding: Finding) -> dict:
    """Where DataSync can reach the Terraform file system: a mount target's subnet and a security group its mount
    targets admit on NFS (2049). Missing: a blocking line on `finding`."""
    efs, ec2 = session.client("efs"), session.client("ec2")
    try:
        targets = efs.describe_mount_targets(FileSystemId=file_system)["MountTargets"]
    except Exception as error:
        if _missing(error):
            finding.blocking.append(f"file system {file_system} not found in the account")
            return {}
        raise
    for target in targets:
        groups = efs.describe_mount_target_security_groups(MountTargetId=target["MountTargetId"])["SecurityGroups"]
        for group in ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]:
            for rule in group.get("IpPermissions", []):
                if rule.get("IpProtocol") in ("-1", "tcp") and rule.get("FromPort", 0) <= 2049 <= rule.get("ToPort", 65535):
                    for pair in rule.get("UserIdGroupPairs", []):
                        return {"SubnetId": target["SubnetId"], "SecurityGroupId": pair["GroupId"]}
    finding.blocking.append(f"no security group that the mount targets of {file_system} admit on NFS (2049): DataSync "
                            "needs one; add it to a mount target's security group rules")
    return {}


def _workspaces_file_system(templates: dict[str, dict]) -> tuple[str, str]:
    for stack, template in templates.items():
        for logical_id, resource in template.get("Resources", {}).items():
            if resource.get("Type") == "AWS::EFS::FileSystem":
                tags = {t["Key"]: t["Value"] for t in resource.get("Properties", {}).get("FileSystemTags", [])}
                if str(tags.get("Name", "")).endswith("-workspaces"):
                    return stack, logical_id
    raise AdoptError("the stacks have no workspaces file system")


# --- writing ---------------------------------------------------------------------------------------------------------


def removed_blocks(findings: list[Finding]) -> tuple[str, list[str]]:
    """Terraform's side: a `removed` block (Terraform >= 1.7) for each adopted resource, so that Terraform forgets it
    without destroying it; `terraform state rm` for an instance of a count/for_each resource (a block cannot name one)."""
    blocks, state_rm = [], []
    for finding in findings:
        if finding.action == LEAVE:
            continue
        for address in finding.terraform:
            if "[" in address:
                state_rm.append(f"terraform state rm '{address}'")
            else:
                blocks.append(f"# {finding.action}: {finding.what}\nremoved {{\n  from = {address}\n\n  lifecycle {{\n"
                              "    destroy = false\n  }\n}\n")
    return "\n".join(blocks), state_rm


def write(out: Path, result: Result, imports: dict[str, dict], templates: dict[str, dict],
          environment: EnvironmentConfig, assembly: Path, stage: Path, pipeline_name: str,
          config_path: str = "config/environments.toml") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stack, live in sorted(imports.items()):
        mapping = {f.logical_id: f.identifier for f in result.findings if f.action == IMPORT and f.stack == stack}
        to_import = [{"ResourceType": templates[stack]["Resources"][lid]["Type"], "LogicalResourceId": lid,
                      "ResourceIdentifier": ident} for lid, ident in mapping.items()]
        for name, content in ((f"{stack}.mapping.json", mapping), (f"{stack}.import.json", import_template(templates[stack], live)),
                              (f"{stack}.resources-to-import.json", to_import)):
            (out / name).write_text(json.dumps(content, indent=2, default=str) + "\n")
            written.append(out / name)
    blocks, state_rm = removed_blocks(result.findings)
    if any(f.terraform for f in result.findings) or result.unmatched:
        (out / "terraform-removed.tf").write_text(
            "# Terraform forgets what the CDK stacks adopt (import, restore, copy, keep), without destroying it.\n"
            "# Put this file in the Terraform root module, then `terraform plan` shows each as removed from state.\n\n"
            + blocks)
        written.append(out / "terraform-removed.tf")
    (out / "collisions.json").write_text(json.dumps({
        "environment": result.environment, "findings": [asdict(f) for f in result.findings],
        "terraform_state_rm": state_rm, "terraform_without_counterpart": result.unmatched}, indent=2, default=str) + "\n")
    written.append(out / "collisions.json")
    policies = _file_system_policies(templates)
    workspaces = policies.get(f"{environment.qualifier}-workspaces")
    if workspaces is not None and any(f.action == COPY and f.type == "AWS::EFS::FileSystem" for f in result.findings):
        (out / "efs-workspaces.policy.json").write_text(json.dumps(workspaces, indent=2) + "\n")
        written.append(out / "efs-workspaces.policy.json")
    (out / "runbook.md").write_text(runbook(result, environment, assembly, stage, out, state_rm, imports, pipeline_name,
                                               config_path, policies))
    written.append(out / "runbook.md")
    return written


def _file_system_policies(templates: dict[str, dict]) -> dict[str, dict]:
    """Each file system's policy as the template sets it, by its Name tag: put back after the copy."""
    found = {}
    for template in templates.values():
        for resource in template.get("Resources", {}).values():
            if resource.get("Type") == "AWS::EFS::FileSystem":
                props = resource.get("Properties", {})
                tags = {t["Key"]: t["Value"] for t in props.get("FileSystemTags", [])}
                if "FileSystemPolicy" in props and _literal(props["FileSystemPolicy"]):
                    found[str(tags.get("Name", ""))] = props["FileSystemPolicy"]
    return found


def _shell(value) -> str:
    return "'" + json.dumps(value, separators=(",", ":")).replace("'", "'\\''") + "'"


def _expanding(value) -> str:
    """JSON as one double-quoted shell word: `$NAME` in it expands."""
    return '"' + json.dumps(value, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"') + '"'


def runbook(result: Result, environment: EnvironmentConfig, assembly: Path, stage: Path, out: Path,
            state_rm: list[str], imports: dict[str, dict], pipeline_name: str, config_path: str,
            policies: dict[str, dict]) -> str:
    by = {action: [f for f in result.findings if f.action == action] for action in (IMPORT, RESTORE, COPY, LEAVE, KEEP)}
    region, account, qualifier = environment.region, environment.account, environment.qualifier
    database = next((f for f in by[RESTORE]), None)
    instance = f"{qualifier}-postgres"
    final = environment.database.snapshot_identifier or f"{instance}-final-terraform"
    leave_addresses = [a for f in by[LEAVE] for a in f.terraform]
    stage_app = stage.relative_to(assembly.parent) if stage.is_relative_to(assembly.parent) else stage
    paths = result.stack_names
    first = [paths[name] for name in paths if name.endswith(("-Network", "-Data"))]
    lines = [f"# Cutover of {environment.name} ({account}/{region}) from Terraform to the pipeline", "",
             f"Generated by `make adopt`. Run every command with credentials of {account} and `--region {region}` "
             "(the Terraform and pipeline commands where they live), in this order. Each step says how to go back. "
             "The platform is down from step 1 to step 8: the data written after the final snapshot would be lost.", ""]
    blocking = [(f, b) for f in result.findings for b in f.blocking]
    if blocking:
        lines += ["## Before you start: what must change first", ""]
        lines += [f"- {f.what}: {b}" for f, b in blocking] + [""]
    lines += ["## What collides and what moves", "", "| action | resource | differences and notes | Terraform |",
              "| --- | --- | --- | --- |"]
    for finding in result.findings:
        cells = [finding.action, finding.what, "; ".join(finding.differences + finding.notes) or "-",
                 ", ".join(finding.terraform) or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if result.unmatched:
        lines += ["", "Terraform resources with no counterpart in the stacks (Terraform destroys them after the cutover):", ""]
        lines += [f"- {line}" for line in result.unmatched]
    steps: list[tuple[str, list[str]]] = []
    freeze = ["The pipeline must not deploy this environment until step 7:", "", "```bash",
              f"aws codepipeline disable-stage-transition --pipeline-name {pipeline_name} --stage-name "
              f"{environment.stage_id} --transition-type Inbound --reason \"cutover from Terraform\"", "```", "",
              "Announce the window, lower the TTL of the platform's DNS names, stop the Terraform services (desired "
              "count 0)"]
    if database:
        freeze[-1] += ", then take the database's final snapshot:"
        freeze += ["", "```bash",
                   f"aws rds create-db-snapshot --db-instance-identifier {instance} --db-snapshot-identifier {final}",
                   f"aws rds wait db-snapshot-available --db-snapshot-identifier {final}", "```", "",
                   f"Set `database.snapshot_identifier = \"{final}\"` for {environment.name} in the config, commit and "
                   "push (it stays set on every later deploy; the pipeline stops at the disabled transition)."]
    else:
        freeze[-1] += "."
    freeze += ["", "Back: start the Terraform services again and enable the transition (`aws codepipeline "
               "enable-stage-transition ...`); nothing else has changed."]
    steps.append(("Freeze" + (" and final snapshot" if database else ""), freeze))
    letgo = [f"Put `{out / 'terraform-removed.tf'}` in the Terraform root module, then:", "", "```bash", *state_rm,
             "terraform plan   # the adopted resources leave the state; nothing is destroyed", "terraform apply",
             *[f"terraform destroy -target='{a}'" for a in leave_addresses], "```", ""]
    if leave_addresses:
        letgo += ["The `destroy -target` lines remove the stateless resources whose names the stacks need.", ""]
    letgo += ["Back: `terraform import` each address again (or restore the state's previous version), and `terraform "
              "apply` recreates what was destroyed."]
    steps.append(("Terraform lets go", letgo))
    if database:
        steps.append(("Free the database's name", [
            "The restored instance takes the identifier; the Terraform instance stays, renamed:", "", "```bash",
            f"aws rds modify-db-instance --db-instance-identifier {instance} --new-db-instance-identifier "
            f"{instance}-terraform --apply-immediately",
            f"aws rds wait db-instance-available --db-instance-identifier {instance}-terraform", "```", "",
            f"Back: rename it to {instance} again (the same command, the names swapped)."]))
    for stack, live in sorted(imports.items()):
        body = [f"{len(live)} resource(s). The stack does not exist yet, and their definitions refer to resources it "
                "creates, so `cdk import` cannot add them to it: an IMPORT change set creates the stack with them "
                "alone (`{stack}.import.json`: the live value where the template refers to the stack; DeletionPolicy "
                "Retain), and the next step's deploy updates them to the template:".replace("{stack}", stack), "",
                "```bash",
                f"aws cloudformation create-change-set --stack-name {stack} --change-set-name adopt-terraform "
                f"--change-set-type IMPORT --template-body file://{out / f'{stack}.import.json'} "
                f"--resources-to-import file://{out / f'{stack}.resources-to-import.json'}",
                f"aws cloudformation wait change-set-create-complete --stack-name {stack} --change-set-name adopt-terraform",
                f"aws cloudformation execute-change-set --stack-name {stack} --change-set-name adopt-terraform",
                f"aws cloudformation wait stack-import-complete --stack-name {stack}", "```", "",
                "Once the stack exists (a second attempt, or resources found later), `cdk import` reads the mapping "
                "file, run against the stage's own assembly (it does not see the stacks inside a pipeline stage, "
                "aws-cdk #25532), once per set of resources (run again over imported ones, it fails: aws-cdk #36077):",
                "", "```bash",
                f"npx cdk import --app {stage_app} {paths[stack]} --resource-mapping {out / f'{stack}.mapping.json'}",
                "```", ""]
        if database and stack.endswith("-Data"):
            body += [f"`{environment.secret_name('rds/master')}` must hold the Terraform database's login as RDS's "
                     "JSON (`username`, `password`): the restored instance keeps that password, and the stack rotates "
                     "it from there. The app secrets keep their values: a value the stack cannot read as its JSON "
                     "fields fails the deploy and is left as it is (README: \"Moving from the Terraform "
                     "deployment\").", ""]
        body += [f"Back: `aws cloudformation delete-stack --stack-name {stack}` (every imported resource is Retain: it "
                 "stays, and Terraform can import it again)."]
        steps.append((f"Import into {stack}", body))
    steps.append(("Network and Data, by hand", [
        "Before any service starts on the new platform (the data must be in place first), deploy the two lower stacks "
        "from the assembly synthesized with the committed config (the database is restored from the snapshot here):",
        "", "```bash", f"make synth CONFIG={config_path}",
        f"npx cdk deploy --app {stage_app} {' '.join(first)} --exclusively --require-approval never", "```", "",
        "Back: delete the Data stack, then the Network stack (the database leaves a final snapshot; imported and "
        "retained resources stay); rename the Terraform instance back; `terraform import` and apply."]))
    copy_lines: list[str] = []
    for finding in by[COPY]:
        if finding.type == "AWS::S3::Bucket":
            copy_lines += [f"- {finding.what}:", "", "```bash", *finding.notes, "```", ""]
            continue
        source = finding.name
        mount = finding.identifier
        role = f"{qualifier}-adopt-datasync"
        old_arn = f"arn:aws:elasticfilesystem:{region}:{account}:file-system/{source}"
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "datasync.amazonaws.com"},
                                                          "Action": "sts:AssumeRole",
                                                          "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}
        copy_policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite",
                                          "elasticfilesystem:ClientRootAccess"],
            "Resource": [old_arn, f"arn:aws:elasticfilesystem:{region}:{account}:file-system/$NEW_FS"]}]}
        workspaces = f"{qualifier}-workspaces"
        tls_only = {"Version": "2012-10-17", "Statement": [s for s in policies.get(workspaces, {}).get("Statement", [])
                                                            if s.get("Sid") == "TlsOnly"]}
        copy_lines += [
            f"- {finding.what}: AWS DataSync, EFS to EFS over TLS. The new file system's policy refuses root access "
            "and mounts without an access point to everyone; DataSync copies as root, so that policy is relaxed for the "
            f"copy and put back from `{out / 'efs-workspaces.policy.json'}` (the template's) right after it; the "
            "drift check of the next release shows it if it is not.", "", "```bash",
            f"NEW_FS=$(aws ssm get-parameter --name /{qualifier}/efs-id --query Parameter.Value --output text)",
            f"NEW_SUBNET=$(aws ssm get-parameter --name /{qualifier}/private-subnet-ids --query Parameter.Value "
            "--output text | cut -d, -f1)",
            f"NEW_SG=$(aws ssm get-parameter --name /{qualifier}/workspace-sg-id --query Parameter.Value --output text)",
            f"aws iam create-role --role-name {role} --assume-role-policy-document {_shell(trust)}",
            f"aws iam put-role-policy --role-name {role} --policy-name copy --policy-document {_expanding(copy_policy)}",
            f"aws efs put-file-system-policy --file-system-id $NEW_FS --policy {_shell(tls_only)}",
            f"SOURCE=$(aws datasync create-location-efs --efs-filesystem-arn {old_arn} --ec2-config "
            f"SubnetArn=arn:aws:ec2:{region}:{account}:subnet/{mount.get('SubnetId', '<subnet>')},"
            f"SecurityGroupArns=arn:aws:ec2:{region}:{account}:security-group/{mount.get('SecurityGroupId', '<group>')} "
            f"--in-transit-encryption TLS1_2 --file-system-access-role-arn arn:aws:iam::{account}:role/{role} "
            "--query LocationArn --output text)",
            f"TARGET=$(aws datasync create-location-efs --efs-filesystem-arn arn:aws:elasticfilesystem:{region}:"
            f"{account}:file-system/$NEW_FS --ec2-config SubnetArn=arn:aws:ec2:{region}:{account}:subnet/$NEW_SUBNET,"
            f"SecurityGroupArns=arn:aws:ec2:{region}:{account}:security-group/$NEW_SG --in-transit-encryption TLS1_2 "
            f"--file-system-access-role-arn arn:aws:iam::{account}:role/{role} --query LocationArn --output text)",
            "TASK=$(aws datasync create-task --source-location-arn $SOURCE --destination-location-arn $TARGET --options "
            "VerifyMode=POINT_IN_TIME_CONSISTENT,PreserveDeletedFiles=REMOVE,PosixPermissions=PRESERVE,Uid=BOTH,Gid=BOTH "
            "--query TaskArn --output text)",
            "EXECUTION=$(aws datasync start-task-execution --task-arn $TASK --query TaskExecutionArn --output text)",
            "aws datasync describe-task-execution --task-execution-arn $EXECUTION --query Status   # until SUCCESS",
            f"aws efs put-file-system-policy --file-system-id $NEW_FS --policy file://{out / 'efs-workspaces.policy.json'}",
            f"aws iam delete-role-policy --role-name {role} --policy-name copy && aws iam delete-role --role-name {role}",
            "```", ""]
    if copy_lines:
        steps.append(("Copy the data that moves", copy_lines + [
            "Back: the sources are untouched (Terraform forgot them; nothing deleted them)."]))
    steps.append(("The pipeline's first deploy", [
        "```bash", f"aws codepipeline enable-stage-transition --pipeline-name {pipeline_name} --stage-name "
        f"{environment.stage_id} --transition-type Inbound", "```", "",
        "The release waiting at the transition enters the stage: compliance report and release review (Network and "
        "Data show no change), the approval where the environment asks for one, then the Platform and Observability "
        "stacks: the services start on the restored database and the copied data (ClickHouse moves /clickhouse to "
        "the platform file system before it starts), and the smoke tests.", "",
        "Back: delete the Observability and Platform stacks, then as in the previous steps."]))
    steps.append(("Switch the names", [
        f"Point `{environment.domain}` and `*.{environment.domain}` at the Platform stack's output "
        "`LoadBalancerDnsName`.", "", "Back: point them at the Terraform load balancer again."]))
    steps.append(("Check, then open", [
        "The stage's smoke tests have passed; run them again after the switch (README \"Smoke tests\"), sign in, "
        "open a workspace's home directory, call LiteLLM with a key from before the freeze, find a Langfuse trace "
        "from before it. Then announce the end of the window.", "",
        "Back: the names (previous step), then the steps before it in reverse order."]))
    steps.append(("After the cutover", [
        "Once the environment has run on the new platform for as long as you keep backups: `terraform destroy` what is "
        f"left in its state; delete `{instance}-terraform` (a final snapshot first), the copied buckets and file "
        "system, and the Terraform keys listed as keep when nothing they encrypt is kept."]))
    for number, (title, body) in enumerate(steps, start=1):
        lines += ["", f"## {number}. {title}", "", *body]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, session_factory=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.adopt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--environment", required=True, help="the environment to take over (case-insensitive)")
    parser.add_argument("--terraform-state", type=Path, help="`terraform show -json` output of its Terraform root module")
    parser.add_argument("--out", type=Path, help="where to write (default build/adopt/<environment>)")
    parser.add_argument("--config", type=Path, help="the environments file (default config/environments.toml)")
    parser.add_argument("--assembly", type=Path, default=Path("cdk.out"), help="the synthesized assembly (make synth)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        try:
            environment = config.environment(args.environment)
        except (KeyError, ValueError):
            raise AdoptError(f"no environment {args.environment!r} in the config: "
                             f"{', '.join(e.name for e in config.environments)}") from None
        terraform = read_terraform(args.terraform_state) if args.terraform_state else None
        stage = stage_directory(args.assembly, environment)
        session = environment_session(environment, session_factory)
        result, imports, templates = adopt(config, environment, stage, session, terraform)
        out = args.out or Path("build") / "adopt" / environment.name
        written = write(out, result, imports, templates, environment, args.assembly, stage,
                        f"{config.project.name}-platform", str(args.config or "config/environments.toml"))
    except (AdoptError, AssemblyError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # an AWS failure mid-way: one line, not a traceback
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(error, NoCredentialsError):
            print("error: no AWS credentials: run with the environment's account credentials", file=sys.stderr)
            return 2
        if isinstance(error, (ClientError, BotoCoreError)):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
    counts = {action: sum(f.action == action for f in result.findings) for action in (IMPORT, RESTORE, COPY, LEAVE, KEEP)}
    blocking = sum(len(f.blocking) for f in result.findings)
    print(f"{environment.name}: {len(result.findings)} to act on ({', '.join(f'{n} {a}' for a, n in counts.items() if n) or 'none'})"
          f"{f', {blocking} to change first' if blocking else ''}"
          f"{f'; {len(result.unmatched)} Terraform resources without counterpart' if result.unmatched else ''}")
    for finding in result.findings:
        print(f"  {finding.action:<18} {finding.what}")
        for line in finding.blocking:
            print(f"  {'':<18}   change first: {line}")
    print(f"Written: {', '.join(str(p) for p in written)}")
    return 1 if result.acting else 0


if __name__ == "__main__":
    sys.exit(main())
