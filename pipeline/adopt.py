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
from pipeline.bootstrap import QUALIFIER
from pipeline.changes import _references
from pipeline.resource_schemas import create_only

IMPORT = "import"
RESTORE = "restore"
COPY = "copy"
LEAVE = "leave to Terraform"
KEEP = "keep"  # Terraform forgets it and nobody deletes it: it encrypts data that moves

# The types whose names the stacks fix, each one CloudFormation can import ("Resource type support"): (the property
# holding the name, whether it holds data that must not be lost: imported; otherwise deleted and made anew).
TYPES: dict[str, tuple[str, bool]] = {
    "AWS::RDS::DBInstance": ("DBInstanceIdentifier", True),
    "AWS::SecretsManager::Secret": ("Name", True),
    "AWS::S3::Bucket": ("BucketName", True),
    "AWS::DynamoDB::Table": ("TableName", True),
    "AWS::Logs::LogGroup": ("LogGroupName", True),
    "AWS::Backup::BackupVault": ("BackupVaultName", True),
    "AWS::SSM::Parameter": ("Name", False),
    "AWS::CloudWatch::Alarm": ("AlarmName", False),
    "AWS::CloudWatch::Dashboard": ("DashboardName", False),
    "AWS::SNS::Topic": ("TopicName", False),
    "AWS::ECS::Cluster": ("ClusterName", False),
    "AWS::IAM::Role": ("RoleName", False),
    "AWS::KMS::Alias": ("AliasName", False),
    "AWS::ServiceDiscovery::PrivateDnsNamespace": ("Name", False),
    # The hosted rotation's function (the stacks name it in a RotationSchedule's HostedRotationLambda).
    "AWS::Lambda::Function": ("FunctionName", False),
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
    "aws_lambda_function": ("AWS::Lambda::Function", "function_name"),
    "aws_service_discovery_private_dns_namespace": ("AWS::ServiceDiscovery::PrivateDnsNamespace", "name"),
}

# Terraform resources with no counterpart that hold nothing to keep: destroyed by Terraform after the cutover. Any other
# one (a bucket's versioning or policy, a secret's rotation, a zone, a repository...) is forgotten by Terraform, never
# destroyed: a person decides. One that names an adopted resource is always forgotten (it configures that resource).
STATELESS_TERRAFORM = frozenset({
    "aws_security_group", "aws_security_group_rule", "aws_vpc_security_group_ingress_rule",
    "aws_vpc_security_group_egress_rule", "aws_lb", "aws_alb", "aws_lb_listener", "aws_alb_listener",
    "aws_lb_listener_rule", "aws_lb_target_group", "aws_alb_target_group", "aws_lb_target_group_attachment",
    "aws_ecs_service", "aws_ecs_task_definition", "aws_ecs_cluster_capacity_providers", "aws_appautoscaling_target",
    "aws_appautoscaling_policy", "aws_cloudwatch_metric_alarm", "aws_cloudwatch_dashboard", "aws_iam_role",
    "aws_iam_role_policy", "aws_iam_role_policy_attachment", "aws_iam_policy", "aws_service_discovery_service",
    "aws_sns_topic_subscription", "aws_cloudwatch_event_rule", "aws_cloudwatch_event_target",
})


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
    source: str | None = None  # restore: the Terraform instance's identifier; copy: the Terraform file system or bucket
    delete: str | None = None  # leave, not in the Terraform state given: how to delete it before the first deploy


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
            rotation = resource.get("Properties", {}).get("HostedRotationLambda", {}).get("RotationLambdaName")
            if kind == "AWS::SecretsManager::RotationSchedule" and isinstance(rotation, str):
                found.append(Named(stack, path, logical_id, "AWS::Lambda::Function", rotation, resource))
    return found


# --- the account -----------------------------------------------------------------------------------------------------

# Each type's reader (READERS): the resource's import identifier and its properties as CloudFormation names them, or
# None when no resource of that name exists. Read-only calls the bootstrap's lookup role (ReadOnlyAccess) may make.

# What each service answers for a name that does not exist (anything else, AccessDenied included, is an error).
MISSING_CODES = frozenset({"ResourceNotFoundException", "ParameterNotFound", "NoSuchEntity", "DBInstanceNotFound",
                           "DBSnapshotNotFound", "NotFound", "404", "NoSuchBucket", "ResourceNotFound", "FileSystemNotFound",
                           "ClusterNotFoundException", "ResourceNotFoundFault"})


def _missing(error: Exception) -> bool:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "") in MISSING_CODES


def _found(call: Callable, **kwargs) -> dict | None:
    """The call's answer, or None when the service says the resource does not exist."""
    try:
        return call(**kwargs)
    except Exception as error:
        if _missing(error):
            return None
        raise


def _read_bucket(session, name: str):
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=name)
    except Exception as error:
        if _missing(error):
            return None
        if getattr(error, "response", {}).get("Error", {}).get("Code") == "403":  # not ours to read
            return {"BucketName": name}, {"BucketName": name, "Owner": "unreadable"}
        raise
    status = s3.get_bucket_versioning(Bucket=name).get("Status")
    props = {"BucketName": name, "VersioningConfiguration": {"Status": status} if status else None}
    return {"BucketName": name}, props


def _read_secret(session, name: str):
    secret = _found(session.client("secretsmanager").describe_secret, SecretId=name)
    if secret is None or secret.get("Name") != name:  # a secret found by a partial ARN of another name
        return None
    return {"Id": secret["ARN"]}, {"Name": name, "Description": secret.get("Description"), "KmsKeyId": secret.get("KmsKeyId")}


def _read_table(session, name: str):
    answer = _found(session.client("dynamodb").describe_table, TableName=name)
    if answer is None:
        return None
    table = answer["Table"]
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
    vault = _found(session.client("backup").describe_backup_vault, BackupVaultName=name)
    if vault is None:
        return None
    return {"BackupVaultName": name}, {"BackupVaultName": name, "EncryptionKeyArn": vault.get("EncryptionKeyArn")}


def _read_parameter(session, name: str):
    answer = _found(session.client("ssm").get_parameter, Name=name)
    if answer is None:
        return None
    parameter = answer["Parameter"]
    return {"Name": name}, {"Name": name, "Type": parameter["Type"], "Value": parameter["Value"]}


def _read_alarm(session, name: str):
    alarms = session.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    if not alarms:
        return None
    alarm = alarms[0]
    keys = ("MetricName", "Namespace", "Threshold", "ComparisonOperator", "EvaluationPeriods", "Statistic")
    return {"AlarmName": name}, {"AlarmName": name, **{k: alarm.get(k) for k in keys}}


def _read_dashboard(session, name: str):
    if _found(session.client("cloudwatch").get_dashboard, DashboardName=name) is None:
        return None
    return {"DashboardName": name}, {"DashboardName": name}


def _read_topic(session, name: str):
    arn = f"arn:{_partition(session)}:sns:{session.region_name}:{_account(session)}:{name}"
    answer = _found(session.client("sns").get_topic_attributes, TopicArn=arn)
    if answer is None:
        return None
    attributes = answer["Attributes"]
    return {"TopicArn": arn}, {"TopicName": name, "DisplayName": attributes.get("DisplayName"),
                               "KmsMasterKeyId": attributes.get("KmsMasterKeyId")}


def _read_cluster(session, name: str):
    clusters = session.client("ecs").describe_clusters(clusters=[name])["clusters"]
    if not [c for c in clusters if c.get("status") == "ACTIVE"]:
        return None
    return {"ClusterName": name}, {"ClusterName": name}


def _read_role(session, name: str):
    answer = _found(session.client("iam").get_role, RoleName=name)
    if answer is None:
        return None
    role = answer["Role"]
    return {"RoleName": name}, {"RoleName": name, "AssumeRolePolicyDocument": role.get("AssumeRolePolicyDocument")}


def _read_alias(session, name: str):
    for page in session.client("kms").get_paginator("list_aliases").paginate():
        for alias in page["Aliases"]:
            if alias["AliasName"] == name:
                return {"AliasName": name}, {"AliasName": name, "TargetKeyId": alias.get("TargetKeyId")}
    return None


def _read_instance(session, name: str):
    answer = _found(session.client("rds").describe_db_instances, DBInstanceIdentifier=name)
    if answer is None:
        return None
    (instance,) = answer["DBInstances"]
    return {"DBInstanceIdentifier": name}, {
        "DBInstanceIdentifier": name, "Engine": instance.get("Engine"), "EngineVersion": instance.get("EngineVersion"),
        "StorageEncrypted": instance.get("StorageEncrypted"), "KmsKeyId": instance.get("KmsKeyId"),
        "AllocatedStorage": instance.get("AllocatedStorage")}


def _read_namespace(session, name: str):
    client = session.client("servicediscovery")
    for page in client.get_paginator("list_namespaces").paginate(
            Filters=[{"Name": "TYPE", "Values": ["DNS_PRIVATE"], "Condition": "EQ"}]):
        for namespace in page["Namespaces"]:
            if namespace["Name"] == name:
                return {"Id": namespace["Id"]}, {"Name": name}
    return None


def _read_function(session, name: str):
    answer = _found(session.client("lambda").get_function, FunctionName=name)
    if answer is None:
        return None
    function = answer["Configuration"]
    return {"FunctionName": name}, {"FunctionName": name, "Runtime": function.get("Runtime")}


READERS: dict[str, Callable] = {
    "AWS::S3::Bucket": _read_bucket, "AWS::SecretsManager::Secret": _read_secret, "AWS::DynamoDB::Table": _read_table,
    "AWS::Logs::LogGroup": _read_log_group, "AWS::Backup::BackupVault": _read_vault, "AWS::SSM::Parameter": _read_parameter,
    "AWS::CloudWatch::Alarm": _read_alarm, "AWS::CloudWatch::Dashboard": _read_dashboard, "AWS::SNS::Topic": _read_topic,
    "AWS::ECS::Cluster": _read_cluster, "AWS::IAM::Role": _read_role, "AWS::KMS::Alias": _read_alias,
    "AWS::RDS::DBInstance": _read_instance, "AWS::ServiceDiscovery::PrivateDnsNamespace": _read_namespace,
    "AWS::Lambda::Function": _read_function,
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
    values = document.get("values") if isinstance(document, dict) else None
    if (not isinstance(document, dict) or "format_version" not in document or not isinstance(values, dict)
            or not isinstance(values.get("root_module"), dict)):
        raw = isinstance(document, dict) and "resources" in document and "version" in document
        hint = " (a raw .tfstate: give `terraform show -json` output instead)" if raw else ""
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


def differences(named: Named, live: dict) -> tuple[list[str], list[str]]:
    """(every difference, those CloudFormation can only settle by replacing the resource) between the template and
    the live resource, on the properties the reader sees."""
    props = named.resource.get("Properties", {})
    replacing = create_only(named.type)
    found, blocking = [], []
    for key, live_value in sorted(live.items()):
        if key not in props:
            if live_value not in (None, "", [], {}):
                found.append(f"{key}: live {json.dumps(live_value, default=str)}, the template sets none")
            continue
        if _literal(props[key]):
            if _same(props[key], live_value):
                continue
            line = f"{key}: live {json.dumps(live_value, default=str)}, template {json.dumps(props[key])}"
        elif live_value in (None, ""):
            continue
        else:
            line = f"{key}: live {json.dumps(live_value, default=str)}, the template's comes from the stack"
        found.append(line)
        if key in replacing:
            blocking.append(line)
    return found, blocking


# How to delete a stateless resource by hand when no Terraform state names it (`{name}`: its name).
DELETE_COMMANDS = {
    "AWS::CloudWatch::Alarm": "aws cloudwatch delete-alarms --alarm-names {name}",
    "AWS::CloudWatch::Dashboard": "aws cloudwatch delete-dashboards --dashboard-names {name}",
    "AWS::SSM::Parameter": "aws ssm delete-parameter --name {name}",
    "AWS::KMS::Alias": "aws kms delete-alias --alias-name {name}",
    "AWS::SNS::Topic": "aws sns delete-topic --topic-arn {identifier}",
    "AWS::ServiceDiscovery::PrivateDnsNamespace": "aws servicediscovery delete-namespace --id {identifier}",
    "AWS::Lambda::Function": "aws lambda delete-function --function-name {name}",
}


def restore(target: Named, source: str, environment: EnvironmentConfig, snapshot: dict | None,
            instance: dict | None) -> Finding:
    """The database: restored from `database.snapshot_identifier`, the final snapshot of the Terraform instance
    `source` (`instance`: its live properties, for a snapshot not taken yet)."""
    finding = Finding(RESTORE, f"{target.stack}/{target.logical_id} ({target.type} {target.name})"
                      + ("" if source == target.name else f" <- Terraform instance {source}"), target.stack,
                      target.logical_id, target.type, target.name, source=source)
    wanted = environment.database.snapshot_identifier
    origin = snapshot or instance or {}
    if not wanted:
        finding.blocking.append(f"database.snapshot_identifier is empty: the first deploy would create an empty "
                                f"database; set it to the final snapshot's name (the runbook's step 1 takes "
                                f"{source}-final-terraform)")
    elif snapshot is None:
        finding.notes.append(f"{wanted} does not exist yet: the runbook's first step takes it, once writes have stopped")
    else:
        finding.notes.append(f"{wanted} exists ({snapshot.get('Engine')} {snapshot.get('EngineVersion')}, taken "
                             f"{snapshot.get('SnapshotCreateTime')}): the runbook takes no other; writes after it are "
                             "lost, so it must have been taken after the freeze")
    if origin and not (origin.get("Encrypted") or origin.get("StorageEncrypted")):
        finding.blocking.append(f"{'snapshot ' + wanted if snapshot else 'the instance ' + source} is not encrypted: "
                                "restore from an encrypted copy (aws rds copy-db-snapshot --kms-key-id ...)")
    storage = int(origin.get("AllocatedStorage") or 0)
    wanted_storage = int(target.resource.get("Properties", {}).get("AllocatedStorage") or 0)
    if storage and wanted_storage and storage > wanted_storage:
        finding.blocking.append(f"{storage} GiB allocated ({'snapshot' if snapshot else source}), the template "
                                f"{wanted_storage}: set database.allocated_storage_gb to at least {storage} (storage only grows)")
    major = str(origin.get("EngineVersion", "")).split(".")[0]
    wanted_major = str(target.resource.get("Properties", {}).get("EngineVersion", "")).split(".")[0]
    if major and wanted_major and major != wanted_major:
        finding.blocking.append(f"PostgreSQL {major} ({'snapshot' if snapshot else source}), the template "
                                f"{wanted_major}: upgrade the Terraform database first, then snapshot it")
    if source == target.name:
        finding.notes.append(f"the Terraform instance keeps running as {source}-terraform (renamed to free the name)")
    return finding


def decide(named: Named, live: tuple[dict, dict], environment: EnvironmentConfig, snapshot: dict | None) -> Finding:
    identifier, properties = live
    if named.type == "AWS::RDS::DBInstance":
        return restore(named, named.name, environment, snapshot, properties)
    finding = Finding(IMPORT, f"{named.stack}/{named.logical_id} ({named.type} {named.name})", named.stack,
                      named.logical_id, named.type, named.name)
    _, stateful = TYPES[named.type]
    if properties.get("Owner") == "unreadable":
        finding.blocking.append("the bucket exists but answers 403: another account's (choose another project name), "
                                "or its policy refuses the lookup role (let it read the bucket, then run again)")
        return finding
    found, blocking = differences(named, properties) if named.resource.get("Type") == named.type else ([], [])
    if stateful:
        finding.identifier = identifier
        finding.differences, finding.blocking = found, blocking
        if named.resource.get("DeletionPolicy") not in ("Retain", "RetainExceptOnCreate"):
            finding.notes.append("the template's DeletionPolicy is not Retain: the import template sets Retain")
        return finding
    finding.action = LEAVE
    finding.differences = found
    finding.notes.append("stateless: deleted during the freeze, before the first deploy needs its name; the stack "
                         "creates it anew")
    command = DELETE_COMMANDS.get(named.type)
    finding.delete = command.format(name=named.name, identifier=next(iter(identifier.values()), "")) if command else (
        f"delete {named.type} {named.name} (console or CLI) before the first deploy")
    return finding


def _snapshot(session, identifier: str) -> dict | None:
    if not identifier:
        return None
    answer = _found(session.client("rds").describe_db_snapshots, DBSnapshotIdentifier=identifier)
    return answer["DBSnapshots"][0] if answer and answer["DBSnapshots"] else None


def _outside(value, inside: set[str]) -> bool:
    """Whether a template value refers to anything but `inside`: a resource of the stack not imported, another stack's
    output (Fn::GetStackOutput, Fn::ImportValue)."""
    text = json.dumps(value)
    return bool(_references(value) - inside) or '"Fn::GetStackOutput"' in text or '"Fn::ImportValue"' in text


def import_template(template: dict, imports: dict[str, dict]) -> dict:
    """The template of an IMPORT change set that creates the stack holding `imports` ({logical id: live properties})
    alone: each resource as the assembly defines it, but a property that refers to a resource the stack creates later
    or to another stack takes the live value (or is left out when the live resource has none), and Retain. The first pipeline deploy then
    updates them to the template."""
    resources = {}
    for logical_id, live in imports.items():
        resource = copy.deepcopy(template["Resources"][logical_id])
        props = resource.get("Properties", {})
        for key in list(props):
            if _outside(props[key], set(imports)):
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
    destroyed: list[str]  # addresses of Terraform resources with no counterpart, stateless: destroyed after the cutover
    kept: list[tuple[str, str]]  # (address, why) of the others: forgotten by Terraform, never destroyed
    stack_names: dict[str, str]  # stack name -> construct path, in deploy order
    clusters: list[str] = field(default_factory=list)  # the Terraform deployment's ECS clusters (stopped at the freeze)

    @property
    def acting(self) -> bool:
        return bool(self.findings)


def _instance(session, identifier: str) -> dict | None:
    live = _read_instance(session, identifier) if identifier else None
    return live[1] if live else None


def adopt(config: AppConfig, environment: EnvironmentConfig, stage: Path, session,
          terraform: list[TerraformResource] | None = None) -> tuple[Result, dict[str, dict], dict[str, dict]]:
    """The findings, and per stack the imports' live properties and templates."""
    named = named_resources(stage)
    templates = {name: template for name, _, template in stacks(stage)}
    paths = {name: path for name, path, _ in stacks(stage)}
    findings: list[Finding] = []
    snapshot = _snapshot(session, environment.database.snapshot_identifier)
    by_name = {(n.type, n.name): n for n in named}
    live_of: dict[tuple[str, str], dict] = {}
    for item in named:
        live = READERS[item.type](session, item.name)
        if live is None:
            continue
        finding = decide(item, live, environment, snapshot)
        findings.append(finding)
        live_of[(item.stack, item.logical_id)] = live[1]
    destroyed, kept, clusters = [], [], []
    if terraform is not None:
        file_systems = [r for r in terraform if r.type == "aws_efs_file_system"]
        adopted_names = ({f.name for f in findings if f.name and f.action != LEAVE}
                         | {f.identifier.get("Id", "") for f in findings if f.action != LEAVE}) - {""}
        for resource in terraform:
            kind, _ = TERRAFORM_TYPES.get(resource.type, (None, None))
            if resource.type == "aws_ecs_cluster" and resource.name:
                clusters.append(resource.name)
            counterpart = by_name.get((kind, resource.name)) if kind and resource.name else None
            if counterpart is not None:
                matched = [f for f in findings if (f.stack, f.logical_id) == (counterpart.stack, counterpart.logical_id)]
                for finding in matched:
                    finding.terraform.append(resource.address)
                if not matched:  # the state names it, the account does not have it: nothing to adopt
                    kept.append((resource.address, f"its name {resource.name} is the stack's {counterpart.stack}/"
                                 f"{counterpart.logical_id}, but the account has no such resource"))
                continue
            if resource.type == "aws_db_instance":
                target = next((n for n in named if n.type == "AWS::RDS::DBInstance"), None)
                if target is None:
                    kept.append((resource.address, f"{resource.name}: the stacks have no database"))
                    continue
                finding = restore(target, resource.name or "", environment, snapshot, _instance(session, resource.name or ""))
                finding.terraform.append(resource.address)
                findings.append(finding)
            elif resource.type == "aws_efs_file_system":
                efs = _workspaces_file_system(templates)
                source = str(resource.values.get("id", ""))
                finding = Finding(COPY, f"{resource.address} ({source}) -> {efs[0]}/{efs[1]} (the workspaces' file "
                                  "system)", efs[0], efs[1], "AWS::EFS::FileSystem", source, terraform=[resource.address],
                                  source=source,
                                  notes=["home directories, and /clickhouse, which ClickHouse's first start moves to "
                                         "the platform file system (move-data.sh), copied with AWS DataSync before "
                                         "any service starts"])
                finding.identifier = _mount_point(session, source, finding)
                if environment.platform_data.old_clickhouse_data != "copy":
                    finding.blocking.append(f"platform_data.old_clickhouse_data is "
                                            f"{environment.platform_data.old_clickhouse_data!r}: set \"copy\" so that "
                                            "ClickHouse's first start moves the copied /clickhouse")
                if len(file_systems) > 1:
                    finding.blocking.append(f"{len(file_systems)} Terraform file systems: this copy mirrors one into the "
                                            "workspaces' file system; merge the others into it first")
                findings.append(finding)
            elif resource.type == "aws_s3_bucket" and resource.name:
                residue = _residue(resource.name, environment, config.project.name)
                target = next((n for n in named if n.type == "AWS::S3::Bucket"
                               and _residue(n.name, environment, config.project.name) == residue), None)
                if target is None:
                    kept.append((resource.address, f"bucket {resource.name}: no bucket of the stacks holds {residue!r}"))
                    continue
                findings.append(Finding(COPY, f"{resource.address} ({resource.name}) -> {target.stack}/"
                                        f"{target.logical_id} ({target.name})", target.stack, target.logical_id,
                                        "AWS::S3::Bucket", resource.name, terraform=[resource.address],
                                        source=resource.name, notes=[f"aws s3 sync s3://{resource.name} s3://{target.name}"]))
            elif resource.type == "aws_kms_key":
                findings.append(Finding(KEEP, f"{resource.address} ({resource.values.get('arn', resource.values.get('id', '?'))})",
                                        type="AWS::KMS::Key", name=resource.values.get("id"), terraform=[resource.address],
                                        notes=["it encrypts data that moves or stays (the final snapshot and the "
                                               "restored database, the old buckets and file system): Terraform forgets "
                                               "it, nobody schedules its deletion while any of that is kept"]))
            elif resource.type in STATELESS_TERRAFORM and not any(
                    name in json.dumps(resource.values, default=str) for name in adopted_names):
                destroyed.append(resource.address)
            else:
                kept.append((resource.address, f"{resource.type} with no counterpart in the stacks"))
    master = environment.secret_name("rds/master")
    for finding in findings:
        if finding.action == RESTORE and not any(f.action == IMPORT and f.name == master and not f.blocking for f in findings):
            finding.blocking.append(f"{master} is not in the account to import: the restored instance keeps the Terraform "
                                    "login, which the stacks read from that secret (RDS's JSON: username, password); "
                                    "put it there first")
    return Result(environment.name, findings, destroyed, kept, paths, clusters), _imports(findings, live_of), templates


def _imports(findings: list[Finding], live_of: dict) -> dict[str, dict[str, dict]]:
    """Per stack, {logical id: live properties} of what is imported (nothing that must change first)."""
    imports: dict[str, dict[str, dict]] = {}
    for finding in findings:
        if finding.action == IMPORT and not finding.blocking:
            imports.setdefault(finding.stack, {})[finding.logical_id] = live_of[(finding.stack, finding.logical_id)]
    return imports


def _mount_point(session, file_system: str, finding: Finding) -> dict:
    """Where DataSync can reach the Terraform file system: a mount target's subnet and a security group its mount
    targets admit on NFS (2049). Missing: a blocking line on `finding`."""
    efs, ec2 = session.client("efs"), session.client("ec2")
    answer = _found(efs.describe_mount_targets, FileSystemId=file_system)
    if answer is None:
        finding.blocking.append(f"file system {file_system} not found in the account")
        return {}
    for target in answer["MountTargets"]:
        groups = efs.describe_mount_target_security_groups(MountTargetId=target["MountTargetId"])["SecurityGroups"]
        for group in ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]:
            for rule in group.get("IpPermissions", []):
                if rule.get("IpProtocol") in ("-1", "tcp") and rule.get("FromPort", 0) <= 2049 <= rule.get("ToPort", 65535):
                    for pair in rule.get("UserIdGroupPairs", []):
                        return {"SubnetId": target["SubnetId"], "SecurityGroupId": pair["GroupId"]}
    finding.blocking.append(f"no security group that the mount targets of {file_system} admit on NFS (2049): DataSync "
                            "needs one; add it to a mount target's security group rules")
    return {}


def _file_systems(templates: dict[str, dict]) -> list[tuple[str, str, str, dict]]:
    """(stack, logical id, Name tag, properties) of each file system of the stacks."""
    found = []
    for stack, template in templates.items():
        for logical_id, resource in template.get("Resources", {}).items():
            if resource.get("Type") == "AWS::EFS::FileSystem":
                props = resource.get("Properties", {})
                tags = {t["Key"]: t["Value"] for t in props.get("FileSystemTags", [])}
                found.append((stack, logical_id, str(tags.get("Name", "")), props))
    return found


def _workspaces_file_system(templates: dict[str, dict]) -> tuple[str, str]:
    found = [(stack, lid) for stack, lid, name, _ in _file_systems(templates) if name.endswith("-workspaces")]
    if not found:
        raise AdoptError("the stacks have no workspaces file system")
    return found[0]


# --- writing ---------------------------------------------------------------------------------------------------------


def removed_blocks(result: Result) -> tuple[str, list[str]]:
    """Terraform's side: a `removed` block (Terraform >= 1.7) for each resource the stacks adopt, restore, copy or
    keep, and each one kept for a person to decide, so that Terraform forgets it without destroying it; `terraform
    state rm` for an instance of a count/for_each resource (a block cannot name one)."""
    forgotten = [(address, f"{f.action}: {f.what}") for f in result.findings if f.action != LEAVE for address in f.terraform]
    forgotten += [(address, f"kept: {why}") for address, why in result.kept]
    blocks, state_rm = [], []
    for address, why in forgotten:
        if "[" in address:
            state_rm.append(f"terraform state rm '{address}'")
        else:
            blocks.append(f"# {why}\nremoved {{\n  from = {address}\n\n  lifecycle {{\n    destroy = false\n  }}\n}}\n")
    return "\n".join(blocks), state_rm


def write(out: Path, result: Result, imports: dict[str, dict], templates: dict[str, dict],
          environment: EnvironmentConfig, assembly: Path, stage: Path, pipeline_name: str,
          config_path: str = "config/environments.toml") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stack, live in sorted(imports.items()):
        mapping = {f.logical_id: f.identifier for f in result.findings
                   if f.action == IMPORT and f.stack == stack and f.logical_id in live}
        to_import = [{"ResourceType": templates[stack]["Resources"][lid]["Type"], "LogicalResourceId": lid,
                      "ResourceIdentifier": ident} for lid, ident in mapping.items()]
        for name, content in ((f"{stack}.mapping.json", mapping), (f"{stack}.import.json", import_template(templates[stack], live)),
                              (f"{stack}.resources-to-import.json", to_import)):
            (out / name).write_text(json.dumps(content, indent=2, default=str) + "\n")
            written.append(out / name)
    blocks, state_rm = removed_blocks(result)
    if blocks:
        (out / "terraform-removed.tf").write_text(
            "# Terraform forgets what the CDK stacks adopt (import, restore, copy, keep), without destroying it.\n"
            "# Put this file in the Terraform root module, then `terraform plan` shows each as removed from state.\n\n"
            + blocks)
        written.append(out / "terraform-removed.tf")
    (out / "collisions.json").write_text(json.dumps({
        "environment": result.environment, "findings": [asdict(f) for f in result.findings],
        "terraform_state_rm": state_rm, "terraform_destroyed_after_cutover": result.destroyed,
        "terraform_kept": [{"address": a, "why": w} for a, w in result.kept]}, indent=2, default=str) + "\n")
    written.append(out / "collisions.json")
    policies = _file_system_policies(templates)
    workspaces = policies.get(f"{environment.qualifier}-workspaces")
    if workspaces is not None and any(f.action == COPY and f.type == "AWS::EFS::FileSystem" for f in result.findings):
        (out / "efs-workspaces.policy.json").write_text(json.dumps(workspaces, indent=2) + "\n")
        written.append(out / "efs-workspaces.policy.json")
    (out / "runbook.md").write_text(runbook(result, environment, assembly, stage, out, state_rm, imports, pipeline_name,
                                               config_path, policies, templates))
    written.append(out / "runbook.md")
    return written


def _file_system_policies(templates: dict[str, dict]) -> dict[str, dict]:
    """Each file system's policy as the template sets it, by its Name tag: put back after the copy."""
    return {name: props["FileSystemPolicy"] for _, _, name, props in _file_systems(templates)
            if "FileSystemPolicy" in props and _literal(props["FileSystemPolicy"])}


def _shell(value) -> str:
    return "'" + json.dumps(value, separators=(",", ":")).replace("'", "'\\''") + "'"


def _expanding(value) -> str:
    """JSON as one double-quoted shell word: `$NAME` in it expands."""
    return '"' + json.dumps(value, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_secrets(template: dict) -> set[str]:
    """Logical ids of the secrets the stack reads as JSON: generated from a JSON template, or filled field by field."""
    found = {lid for lid, r in template.get("Resources", {}).items() if r.get("Type") == "AWS::SecretsManager::Secret"
             and "SecretStringTemplate" in r.get("Properties", {}).get("GenerateSecretString", {})}
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "Custom::SecretFields" and ("Fields" in props or props.get("Placeholder", {}).get("Field")):
            found |= _references(props.get("SecretId"))
    return found


def _stack_output(template: dict, value) -> str | None:
    """The name of a stack's output whose value is `value`."""
    return next((name for name, output in template.get("Outputs", {}).items() if output.get("Value") == value), None)


def copy_endpoints(templates: dict[str, dict], stack: str, file_system: str) -> dict[str, tuple[str, str]] | None:
    """Where the runbook reads, from the stacks' outputs, what DataSync needs of the workspaces' file system once the
    Network and Data stacks are deployed: {"file_system" | "subnet" | "security_group": (stack, output name)}. The
    security group is one the file system's mount targets admit on NFS (the workspaces')."""
    data = templates[stack]
    fs_output = _stack_output(data, {"Ref": file_system})
    target = next((r["Properties"] for r in data["Resources"].values() if r["Type"] == "AWS::EFS::MountTarget"
                   and r["Properties"].get("FileSystemId") == {"Ref": file_system}), None)
    if fs_output is None or target is None:
        return None
    subnet = target["SubnetId"].get("Fn::GetStackOutput", {}) if isinstance(target["SubnetId"], dict) else {}
    groups = [g.get("Fn::GetStackOutput", {}) for g in target.get("SecurityGroups", []) if isinstance(g, dict)]
    if not subnet or not groups or groups[0].get("StackName") not in templates:
        return None
    network = templates[groups[0]["StackName"]]
    mount_group = network.get("Outputs", {}).get(groups[0]["OutputName"], {}).get("Value")
    for rule in network["Resources"].values():
        props = rule.get("Properties", {})
        if (rule["Type"] == "AWS::EC2::SecurityGroupIngress" and props.get("GroupId") == mount_group
                and props.get("FromPort", 0) <= 2049 <= props.get("ToPort", 0) and "SourceSecurityGroupId" in props):
            client = _stack_output(network, props["SourceSecurityGroupId"])
            if client and "workspace" in client.lower():
                return {"file_system": (stack, fs_output), "subnet": (subnet["StackName"], subnet["OutputName"]),
                        "security_group": (groups[0]["StackName"], client)}
    return None


def _output(stack: str, name: str) -> str:
    return (f"$(aws cloudformation describe-stacks --stack-name {stack} --query "
            f"\"Stacks[0].Outputs[?OutputKey=='{name}'].OutputValue\" --output text)")


def runbook(result: Result, environment: EnvironmentConfig, assembly: Path, stage: Path, out: Path,
            state_rm: list[str], imports: dict[str, dict], pipeline_name: str, config_path: str,
            policies: dict[str, dict], templates: dict[str, dict]) -> str:
    by = {action: [f for f in result.findings if f.action == action] for action in (IMPORT, RESTORE, COPY, LEAVE, KEEP)}
    region, account, qualifier = environment.region, environment.account, environment.qualifier
    database = next(iter(by[RESTORE]), None)
    source = database.source if database else None
    final = environment.database.snapshot_identifier or (f"{source}-final-terraform" if source else "")
    snapshot_exists = bool(database and any(n.startswith(f"{final} exists") for n in database.notes))
    stage_app = stage.relative_to(assembly.parent) if stage.is_relative_to(assembly.parent) else stage
    paths = result.stack_names
    first = [paths[name] for name in paths if name.endswith(("-Network", "-Data"))]
    leave_targets = [a for f in by[LEAVE] for a in f.terraform]
    leave_by_hand = [f.delete for f in by[LEAVE] if not f.terraform and f.delete]
    lines = [f"# Cutover of {environment.name} ({account}/{region}) from Terraform to the pipeline", "",
             f"Generated by `make adopt`. Run every command with credentials of {account} and `--region {region}` "
             "(the Terraform and pipeline commands where they live), in this order. Each step says how to go back. "
             "The platform is down from step 1 until the names are switched: what is written after the freeze "
             "would be lost.", ""]
    blocking = [(f, b) for f in result.findings for b in f.blocking]
    if blocking:
        lines += ["## Before you start: what must change first", "", "Then run `make adopt` again.", ""]
        lines += [f"- {f.what}: {b}" for f, b in blocking] + [""]
    lines += ["## What collides and what moves", "", "| action | resource | differences and notes | Terraform |",
              "| --- | --- | --- | --- |"]
    for finding in result.findings:
        cells = [finding.action, finding.what, "; ".join(finding.differences + finding.notes) or "-",
                 ", ".join(finding.terraform) or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if result.destroyed:
        lines += ["", "Terraform resources with no counterpart that hold nothing (Terraform destroys them after the "
                  "cutover):", "", *[f"- {a}" for a in result.destroyed]]
    if result.kept:
        lines += ["", "Terraform resources with no counterpart that may hold something or configure what is adopted "
                  "(Terraform forgets them, nothing destroys them; decide by hand):", "",
                  *[f"- {a}: {why}" for a, why in result.kept]]
    steps: list[tuple[str, list[str]]] = []
    freeze = ["The pipeline must not deploy this environment until the stacks are ready for it:", "", "```bash",
              f"aws codepipeline disable-stage-transition --pipeline-name {pipeline_name} --stage-name "
              f"{environment.stage_id} --transition-type Inbound --reason \"cutover from Terraform\"", "```", "",
              "Announce the window and lower the TTL of the platform's names. While Coder still runs, stop every "
              "workspace in Coder (they write to the home directories). Then nothing of them may be left: each "
              "service of the Terraform clusters at 0 tasks, until no task runs:"]
    clusters = result.clusters or ["<each Terraform ECS cluster>"]
    freeze += ["", "```bash", *[f"for service in $(aws ecs list-services --cluster {c} --query serviceArns --output text); "
                                f"do aws ecs update-service --cluster {c} --service $service --desired-count 0 "
                                ">/dev/null; done" for c in clusters],
               *[f"until [ -z \"$(aws ecs list-tasks --cluster {c} --query taskArns --output text)\" ]; do sleep 15; done"
                 for c in clusters], "```", "",
               "Then in the Terraform code set every ECS service's `desired_count = 0` and `terraform apply` (scaled "
               "only by hand, the next apply would start them again)."]
    if database:
        master = environment.secret_name("rds/master")
        freeze += ["", f"The database's login stays as it is until the restore: no rotation of `{master}` from now on, "
                   "and its current version noted for the way back:", "", "```bash",
                   f"aws secretsmanager cancel-rotate-secret --secret-id {master}",
                   f"aws secretsmanager list-secret-version-ids --secret-id {master} --query "
                   f"\"Versions[?contains(VersionStages, 'AWSCURRENT')].VersionId\" --output text > {out / 'rds-master-version.txt'}",
                   "```"]
    if database and not snapshot_exists:
        freeze += ["", "Then the database's final snapshot:", "", "```bash",
                   f"aws rds create-db-snapshot --db-instance-identifier {source} --db-snapshot-identifier {final}",
                   f"aws rds wait db-snapshot-available --db-snapshot-identifier {final}", "```"]
    if database:
        freeze += ["", f"`database.snapshot_identifier = \"{final}\"` for {environment.name} in the config "
                   f"({config_path}): commit and push it (it stays set on every later deploy; the release stops at the "
                   "disabled transition)."]
    freeze += ["", "Back: `terraform apply` with the services' counts as they were, start the workspaces, enable the "
               f"transition (`aws codepipeline enable-stage-transition --pipeline-name {pipeline_name} --stage-name "
               f"{environment.stage_id} --transition-type Inbound`)."]
    steps.append(("Freeze" + (" and final snapshot" if database else ""), freeze))
    letgo = [f"In the Terraform code, delete the blocks of the resources `{out / 'terraform-removed.tf'}` names and of "
             "those `terraform state rm` takes (a `removed` block replaces its resource's block: Terraform refuses "
             "both; kept in the code, a state-removed resource would be created again), and whatever refers to them. "
             "Put the file in the root module, then:", "", "```bash", *state_rm,
             "terraform plan   # the adopted resources leave the state; nothing is destroyed", "terraform apply",
             *[f"terraform destroy -target='{a}'" for a in leave_targets], *leave_by_hand, "```", ""]
    if leave_targets or leave_by_hand:
        letgo += ["The last lines delete the stateless resources whose names the stacks need.", ""]
    letgo += ["Back: restore the Terraform code and the state's previous version (or `terraform import` each address), "
              "and `terraform apply` recreates what was deleted."]
    steps.append(("Terraform lets go", letgo))
    if database and source == database.name:
        steps.append(("Free the database's name", [
            "The restored instance takes the identifier; the Terraform instance stays, renamed:", "", "```bash",
            f"aws rds modify-db-instance --db-instance-identifier {source} --new-db-instance-identifier "
            f"{source}-terraform --apply-immediately",
            f"until [ \"$(aws rds describe-db-instances --db-instance-identifier {source}-terraform --query "
            "'DBInstances[0].DBInstanceStatus' --output text 2>/dev/null)\" = available ]; do sleep 30; done", "```", "",
            f"Back: rename it to {source} again (the same command, the names swapped)."]))
    for stack in paths:
        live = imports.get(stack)
        if not live:
            continue
        body = [f"{len(live)} resource(s). The stack does not exist yet, and their definitions refer to resources it "
                f"creates and to other stacks, so `cdk import` cannot add them to it: an IMPORT change set creates the "
                f"stack with them alone (`{stack}.import.json`: the live value wherever the template refers to "
                "anything else; DeletionPolicy Retain), and the next deploy updates them to the template:", "",
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
        if database and stack == database.stack:
            body += [f"`{environment.secret_name('rds/master')}` must hold the Terraform database's login as RDS's "
                     "JSON (`username`, `password`): the restored instance keeps that password, and the stack rotates "
                     "it from there. The app secrets keep every value they hold; one that is not a JSON object fails "
                     "the deploy, untouched (README: \"Moving from the Terraform deployment\").", ""]
        body += [f"Back: `aws cloudformation delete-stack --stack-name {stack}` (every imported resource is Retain: it "
                 "stays, and Terraform can import it again)."]
        steps.append((f"Import into {stack}", body))
    data_stack = next((name for name in paths if name.endswith("-Data")), "")
    json_secrets = [f.name for f in by[IMPORT] if f.type == "AWS::SecretsManager::Secret"
                    and f.logical_id in _json_secrets(templates.get(f.stack, {})) and f.logical_id in imports.get(f.stack, {})]
    hand = ["Before any service starts on the new platform (the data must be in place first), deploy the two lower stacks "
            "from the assembly synthesized with the committed config" + (" (the database is restored from the snapshot "
                                                                         "here)" if database else "") + "."]
    if json_secrets:
        hand += ["", "The imported secrets the stacks read as JSON must hold a JSON object (a plain string fails the "
                 "deploy, untouched: put the same value under its field first); this prints nothing but the names "
                 "that do not:", "", "```bash",
                 *[f"aws secretsmanager get-secret-value --secret-id {name} --query SecretString --output text | "
                   "python3 -c 'import json, sys; sys.exit(not isinstance(json.load(sys.stdin), dict))' 2>/dev/null "
                   f"|| echo 'not a JSON object: {name}'" for name in json_secrets], "```"]
    hand += ["", "Without rollback: a failure leaves what was made in place (a restored database, named secrets) for the "
             "same command to go on from once the cause is fixed, instead of a rollback that cannot delete the "
             "deletion-protected database and leaves the names taken:", "", "```bash", f"make synth CONFIG={config_path}",
             f"npx cdk deploy --app {stage_app} {' '.join(first)} --exclusively --require-approval never --no-rollback",
             "```", ""]
    back = [f"aws cloudformation update-termination-protection --no-enable-termination-protection --stack-name {data_stack}"]
    if database:
        master = environment.secret_name("rds/master")
        back += [f"aws rds modify-db-instance --db-instance-identifier {database.name} --no-deletion-protection "
                 "--apply-immediately",
                 f"aws secretsmanager update-secret-version-stage --secret-id {master} --version-stage AWSCURRENT "
                 f"--move-to-version-id $(cat {out / 'rds-master-version.txt'}) --remove-from-version-id $(aws "
                 f"secretsmanager list-secret-version-ids --secret-id {master} --query "
                 "\"Versions[?contains(VersionStages, 'AWSCURRENT')].VersionId\" --output text)"]
    back += [f"aws cloudformation delete-stack --stack-name {name}" for name in (data_stack, *[n for n in paths if n.endswith("-Network")])]
    hand += ["Back: protections off, the database's login as it was (the stack's rotation may have changed it), then "
             "the stacks deleted (the database leaves a final snapshot; imported and retained resources stay)"
             + (f"; then rename {source}-terraform back" if database and source == database.name else "") + ":", "",
             "```bash", *back, "```"]
    steps.append(("Network and Data, by hand", hand))
    copy_lines: list[str] = []
    for finding in by[COPY]:
        if finding.type == "AWS::S3::Bucket":
            copy_lines += [f"- {finding.what}:", "", "```bash", *finding.notes, "```", ""]
            continue
        endpoints = copy_endpoints(templates, finding.stack, finding.logical_id)
        if endpoints is None:
            raise AdoptError(f"{finding.stack}/{finding.logical_id}: no output, mount target or admitted security group "
                             "in the templates for the copy")
        mount = finding.identifier
        role = f"{qualifier}-adopt-datasync"
        old_arn = f"arn:aws:elasticfilesystem:{region}:{account}:file-system/{finding.source}"
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "datasync.amazonaws.com"},
                                                          "Action": "sts:AssumeRole",
                                                          "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}
        role_arn = f"arn:aws:iam::{account}:role/{role}"
        copy_policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "ReadTheSource", "Effect": "Allow", "Action": ["elasticfilesystem:ClientMount",
                                                                   "elasticfilesystem:ClientRootAccess"], "Resource": old_arn},
            {"Sid": "WriteTheCopy", "Effect": "Allow", "Action": [
                "elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"],
             "Resource": f"arn:aws:elasticfilesystem:{region}:{account}:file-system/$NEW_FS"}]}
        # The template's policy, but the copy role exempt from its access-point and root refusals (everyone else not).
        relaxed = json.loads(json.dumps(policies.get(f"{qualifier}-workspaces", {"Statement": []})))
        for statement in relaxed.get("Statement", []):
            if statement.get("Sid") in ("AccessPointsOnly", "NoRootAccess"):
                statement.setdefault("Condition", {})["ArnNotEquals"] = {"aws:PrincipalArn": role_arn}
        copy_lines += [
            f"- {finding.what}: AWS DataSync, EFS to EFS over TLS, with a role made for it (it may read the source and "
            "write the copy, as root) and deleted after it. The new file system's policy refuses root access and mounts "
            "without an access point to everyone; for the copy that role alone is exempted, and the template's policy "
            f"is put back from `{out / 'efs-workspaces.policy.json'}` once it is done (the next release's drift check "
            "shows it if it is not).", "", "```bash",
            f"NEW_FS={_output(*endpoints['file_system'])}",
            f"NEW_SUBNET={_output(*endpoints['subnet'])}",
            f"NEW_SG={_output(*endpoints['security_group'])}",
            f"aws iam create-role --role-name {role} --assume-role-policy-document {_shell(trust)}",
            f"aws iam put-role-policy --role-name {role} --policy-name copy --policy-document {_expanding(copy_policy)}",
            f"aws efs put-file-system-policy --file-system-id $NEW_FS --policy {_shell(relaxed)}",
            f"SOURCE=$(aws datasync create-location-efs --efs-filesystem-arn {old_arn} --ec2-config "
            f"SubnetArn=arn:aws:ec2:{region}:{account}:subnet/{mount.get('SubnetId', '<subnet>')},"
            f"SecurityGroupArns=arn:aws:ec2:{region}:{account}:security-group/{mount.get('SecurityGroupId', '<group>')} "
            f"--in-transit-encryption TLS1_2 --file-system-access-role-arn {role_arn} --query LocationArn --output text)",
            f"TARGET=$(aws datasync create-location-efs --efs-filesystem-arn arn:aws:elasticfilesystem:{region}:"
            f"{account}:file-system/$NEW_FS --ec2-config SubnetArn=arn:aws:ec2:{region}:{account}:subnet/$NEW_SUBNET,"
            f"SecurityGroupArns=arn:aws:ec2:{region}:{account}:security-group/$NEW_SG --in-transit-encryption TLS1_2 "
            f"--file-system-access-role-arn {role_arn} --query LocationArn --output text)",
            "TASK=$(aws datasync create-task --source-location-arn $SOURCE --destination-location-arn $TARGET --options "
            "VerifyMode=POINT_IN_TIME_CONSISTENT,PreserveDeletedFiles=REMOVE,PosixPermissions=PRESERVE,Uid=BOTH,Gid=BOTH "
            "--query TaskArn --output text)",
            "EXECUTION=$(aws datasync start-task-execution --task-arn $TASK --query TaskExecutionArn --output text)",
            "until STATUS=$(aws datasync describe-task-execution --task-execution-arn $EXECUTION --query Status --output "
            "text); [ \"$STATUS\" = SUCCESS ] || [ \"$STATUS\" = ERROR ]; do sleep 60; done; echo \"copy: $STATUS\"   "
            "# go on only after SUCCESS; ERROR: see the execution, start it again",
            f"aws efs put-file-system-policy --file-system-id $NEW_FS --policy file://{out / 'efs-workspaces.policy.json'}",
            "aws datasync delete-task --task-arn $TASK && aws datasync delete-location --location-arn $SOURCE && "
            "aws datasync delete-location --location-arn $TARGET",
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
        "Back: delete the Observability and Platform stacks, then as in the steps before."]))
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
        "left in its state (the stateless resources listed above)"
        + (f"; delete `{source}-terraform` (a final snapshot first)" if database and source == database.name else "")
        + "; the copied buckets and file system when you no longer need them. Keep Terraform's KMS keys (listed as "
        "keep) as long as anything they encrypt exists: the restored database keeps its snapshot's key."]))
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
          f"{f'; Terraform: {len(result.destroyed)} to destroy after the cutover' if result.destroyed else ''}"
          f"{f', {len(result.kept)} kept for you to decide' if result.kept else ''}")
    for finding in result.findings:
        print(f"  {finding.action:<18} {finding.what}")
        for line in finding.blocking:
            print(f"  {'':<18}   change first: {line}")
    print(f"Written: {', '.join(str(p) for p in written)}")
    return 1 if result.acting else 0


if __name__ == "__main__":
    sys.exit(main())
