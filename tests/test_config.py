"""Config loading and validation: the shipped file, derived names, and bad input refused with a clear message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from config.loader import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config
from config.model import Bucket
from tests.assembly import ROOT

BASE = DEFAULT_CONFIG_PATH.read_text()


def replace(old: str, new: str, *, count: int = 1) -> str:
    """The shipped config with one edit (the first `count` occurrences)."""
    assert old in BASE, old
    return BASE.replace(old, new, count)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    return caught.value.problems


def test_shipped_config_loads():
    config = load_config()
    assert config.project.name == "coder"
    assert [(e.name, e.requires_approval) for e in config.environments] == [("staging", False), ("production", True)]
    assert (config.pipeline.account, *(e.account for e in config.environments)) == (
        "111111111111", "222222222222", "333333333333")
    assert config.environment("Production").network.app_subnet_cidrs == ("10.0.10.0/24", "10.0.11.0/24")


def test_production_values_are_the_seeds():
    production = load_config().environment("production")
    assert production.region == "us-west-2"
    assert production.network.vpc_cidr == "10.0.0.0/16"
    assert production.network.availability_zones == ("us-west-2a", "us-west-2b")
    assert production.network.public_subnet_cidrs == ("10.0.0.0/24", "10.0.1.0/24")
    assert production.network.data_subnet_cidrs == ("10.0.20.0/24", "10.0.21.0/24")
    assert production.database.instance_class == "r6g.large"
    assert (production.database.allocated_storage_gb, production.database.max_allocated_storage_gb) == (100, 500)
    assert production.redis.node_type == "cache.r6g.large"
    assert production.domain == "coder.company.com"
    assert production.services.litellm_desired_count == 2


def test_derived_names():
    config = load_config()
    staging, production = config.environments
    assert production.qualifier == "coder-production"
    assert production.namespace_name == "coder-production.local"
    assert production.ssm_prefix == "/coder-production/"
    assert production.secret_prefix == "prod"
    assert production.secret_name("rds/master") == "prod/rds/master"
    assert staging.secret_prefix == "staging"
    assert staging.bucket_name(Bucket.BACKUPS) == "coder-staging-backups-222222222222-us-west-2"
    assert staging.lock_table_name == "coder-staging-terraform-locks"
    assert (staging.stage_id, production.stage_id) == ("Staging", "Production")


def test_oidc_client_secret_version_is_optional():
    version = "0b7e6f3c-1d2a-4c5b-9e8f-7a6b5c4d3e2f"
    config = parse_config(replace('client_secret_version = ""\n', f'client_secret_version = "{version}"\n'), "test")
    staging, production = config.environments
    assert staging.oidc.client_secret_version == version
    assert production.oidc.client_secret_version == ""


def test_example_values_are_named_with_their_fields():
    staging, production = load_config().environments
    named = dict(production.example_values())
    assert named["production.account"] == "333333333333"
    assert named["production.domain"] == "coder.company.com"
    assert named["production.oidc.client_id"] == "00000000-0000-0000-0000-000000000000"
    real = parse_config(
        BASE.replace("333333333333", "480516523312").replace('domain = "coder.company.com"', 'domain = "coder.acme-corp.io"')
        .replace('allowed_email_domains = ["company.com"]', 'allowed_email_domains = ["acme-corp.io"]')
        .replace("00000000-0000-0000-0000-000000000000", "7f3c2a10-5d4e-4b8a-9c61-2e8f0b1d4a77")
        .replace('owner_email = "platform-admin@company.com"', 'owner_email = "ana.ortiz@acme-corp.io"'), "real.toml",
    )
    assert named["production.langfuse.owner_email"] == "platform-admin@company.com"
    # The corporate gateway of the shipped file is an example too (a real company's URL once slipped through).
    assert named["production.custom_llm_api_base"] == "https://llm-gateway.example.com/v2/api"
    assert [field for field, _ in real.environment("production").example_values()] == ["production.custom_llm_api_base"]
    assert [field for field, _ in real.environment("staging").example_values()] == [
        "staging.account", "staging.images.key_provisioner", "staging.domain", "staging.custom_llm_api_base"]
    no_gateway = parse_config(BASE.replace('custom_llm_api_base = "https://llm-gateway.example.com/v2/api"',
                                           'custom_llm_api_base = ""'), "none.toml")
    assert all(not e.has_gateway for e in no_gateway.environments)
    assert not [f for e in no_gateway.environments for f, _ in e.example_values() if f.endswith("custom_llm_api_base")]


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(ValidationError):
        config.environments[1].domain = "evil.example.com"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.environments[1].tags["Owner"] = "someone"  # type: ignore[index]


# Each case: an edit of the shipped file, and the fragments the message must contain (field, value, allowed).
BAD_INPUTS = {
    "account not 12 digits": (
        replace('account = "222222222222"', 'account = "2222"'),
        ["staging.account = '2222'", "not a 12-digit AWS account id", "Allowed: a 12-digit AWS account id"],
    ),
    "region unknown format": (
        replace('region = "us-west-2"\ndomain = "coder.company.com"', 'region = "uswest2"\ndomain = "coder.company.com"'),
        ["production.region = 'uswest2'", "not an AWS region name"],
    ),
    "AZ outside the region": (
        replace('availability_zones = ["us-west-2a", "us-west-2b"]', 'availability_zones = ["us-west-2a", "us-east-1b"]'),
        ["staging.network.availability_zones", "'us-east-1b'", "not an availability zone in us-west-2"],
    ),
    "CIDR syntax": (
        replace('vpc_cidr = "10.1.0.0/16"', 'vpc_cidr = "10.1.0.300/16"'),
        ["staging.network.vpc_cidr = '10.1.0.300/16'", "not an IPv4 network", "Allowed: an IPv4 CIDR from /16 to /24"],
    ),
    "CIDR too large": (
        replace('vpc_cidr = "10.1.0.0/16"', 'vpc_cidr = "10.0.0.0/8"'),
        ["staging.network.vpc_cidr = '10.0.0.0/8'", "prefix /8 is out of range"],
    ),
    "subnet outside the VPC": (
        replace('app_subnet_cidrs = ["10.1.10.0/24", "10.1.11.0/24"]', 'app_subnet_cidrs = ["10.1.10.0/24", "10.9.11.0/24"]'),
        ["staging.network.app_subnet_cidrs = '10.9.11.0/24'", "outside the VPC 10.1.0.0/16"],
    ),
    "subnets overlap": (
        replace('data_subnet_cidrs = ["10.1.20.0/24", "10.1.21.0/24"]', 'data_subnet_cidrs = ["10.1.10.0/25", "10.1.21.0/24"]'),
        ["staging.network.data_subnet_cidrs = '10.1.10.0/25'", "overlaps 10.1.10.0/24"],
    ),
    "one subnet for two AZs": (
        replace('public_subnet_cidrs = ["10.1.0.0/24", "10.1.1.0/24"]', 'public_subnet_cidrs = ["10.1.0.0/24"]'),
        ["staging.network.public_subnet_cidrs", "1 subnet(s) for 2 availability zones"],
    ),
    "domain syntax": (
        replace('domain = "coder.company.com"', 'domain = "Coder_Company"'),
        ["production.domain = 'Coder_Company'", "not a valid lower-case DNS name"],
    ),
    "hosted zone id": (
        replace('hosted_zone_id = ""', 'hosted_zone_id = "zone-123"'),
        ["staging.hosted_zone_id = 'zone-123'", "not a Route 53 hosted zone id"],
    ),
    "latest image": (
        replace('litellm = "ghcr.io/berriai/litellm:1.87.0"', 'litellm = "ghcr.io/berriai/litellm:main-latest"'),
        ["staging.images.litellm = 'ghcr.io/berriai/litellm:main-latest'", "moves over time", "no latest"],
    ),
    "untagged image": (
        replace('clickhouse = "clickhouse/clickhouse-server:26.4.5.143"', 'clickhouse = "clickhouse/clickhouse-server"'),
        ["staging.images.clickhouse", "not pinned (no tag and no digest)"],
    ),
    "key provisioner not in ECR": (
        replace('key_provisioner = "222222222222.dkr.ecr.us-west-2.amazonaws.com/key-provisioner:1.0.0"',
                'key_provisioner = "docker.io/acme/key-provisioner:1.0.0"'),
        ["staging.images.key_provisioner", "not an ECR image URI"],
    ),
    "zero desired count": (
        replace("litellm_desired_count = 2", "litellm_desired_count = 0"),
        ["staging.services.litellm_desired_count = 0", "out of range", "Allowed: an integer from 1 to 100"],
    ),
    "count as a string": (
        replace("langfuse_web_desired_count = 1", 'langfuse_web_desired_count = "1"'),
        ["staging.services.langfuse_web_desired_count = '1'", "expected an integer, got str"],
    ),
    "OIDC over http": (
        replace('user_info_endpoint = "https://graph.microsoft.com/oidc/userinfo"',
                'user_info_endpoint = "http://graph.microsoft.com/oidc/userinfo"'),
        ["staging.oidc.user_info_endpoint", "not an https URL"],
    ),
    "OIDC client id not a GUID": (
        replace('client_id = "00000000-0000-0000-0000-000000000000"\n', 'client_id = "my-app"\n'),
        ["staging.oidc.client_id = 'my-app'", "not an application (client) id", "a lower-case GUID"],
    ),
    "OIDC client secret version not an id": (
        replace('client_secret_version = ""\n', 'client_secret_version = "AWSCURRENT"\n'),
        ["staging.oidc.client_secret_version = 'AWSCURRENT'", "not a Secrets Manager version id"],
    ),
    "OIDC template placeholder": (
        replace("https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0",
                "https://login.microsoftonline.com/{tenant-id}/v2.0"),
        ["staging.oidc.issuer_url", "contains a template placeholder"],
    ),
    "OIDC issuer of every tenant": (
        replace("https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0",
                "https://login.microsoftonline.com/common/v2.0"),
        ["staging.oidc.issuer_url = 'https://login.microsoftonline.com/common/v2.0'",
         "not the issuer of one Azure AD tenant", "Allowed: https://login.microsoftonline.com/<tenant id>/v2.0"],
    ),
    "Langfuse without an owner": (
        replace('owner_email = "platform-admin@company.com"', 'owner_email = ""'),
        ["staging.langfuse.owner_email = ''", "not an e-mail address"],
    ),
    "old ClickHouse data setting unknown": (
        replace('old_clickhouse_data = "copy"', 'old_clickhouse_data = "delete"'),
        ["staging.platform_data.old_clickhouse_data = 'delete'", "not copy, remove or none"],
    ),
    "unknown key": (
        replace("multi_az = false", "multi_az = false\nmulti_zone = true"),
        ["staging.database.multi_zone = True", "unknown key", "one of allocated_storage_gb, backup_retention_days"],
    ),
    "missing key": (
        replace('node_type = "cache.r6g.large"\n', ""),
        ["production.redis.node_type = (missing)", "required field is missing"],
    ),
    "no environment": (
        BASE[: BASE.index("\n[[environments]]") + 1],
        ["environments = (missing)", "required field is missing", "one [[environments]] table per environment"],
    ),
    "empty environment list": (
        "environments = []\n" + BASE[: BASE.index("\n[[environments]]") + 1],
        ["environments = []", "needs at least 1 item(s)"],
    ),
    "missing section of an environment": (
        BASE.replace("[environments.redis]\nnode_type = \"cache.r6g.large\"\nsnapshot_retention_days = 7\n", ""),
        ["production.redis = (missing)", "required table is missing", "Allowed: a [production.redis] table"],
    ),
    "duplicate environment names": (
        replace('name = "production"', 'name = "staging"'),
        ["staging.name = 'staging'", "environment 1 has the same name"],
    ),
    "upper-case environment name": (
        replace('name = "staging"', 'name = "Staging"'),
        ["Staging.name = 'Staging'", "not a short lower-case name"],
    ),
    "reserved environment name": (
        replace('name = "staging"', 'name = "pipeline"'),
        ["pipeline.name = 'pipeline'", "reserved for the pipeline's own stages"],
    ),
    "same account, overlapping VPCs": (
        replace('account = "333333333333"', 'account = "222222222222"').replace('vpc_cidr = "10.0.0.0/16"', 'vpc_cidr = "10.1.0.0/16"')
        .replace('"10.0.', '"10.1.'),
        ["production.network.vpc_cidr = '10.1.0.0/16'", "overlaps staging's VPC 10.1.0.0/16 in the same account and region"],
    ),
    "same account, same secret prefix": (
        replace('name = "staging"', 'name = "prod"').replace('account = "333333333333"', 'account = "222222222222"'),
        ["production.name = 'production'", "its secrets would be named prod/... like prod's"],
    ),
    "no allowed e-mail domain": (
        replace('allowed_email_domains = ["company.com"]', "allowed_email_domains = []"),
        ["staging.oidc.allowed_email_domains = []", "needs at least 1 item(s)", "the e-mail domains whose users may sign up"],
    ),
    "allowed e-mail domain not a domain": (
        replace('allowed_email_domains = ["company.com"]', 'allowed_email_domains = ["@company.com"]'),
        ["staging.oidc.allowed_email_domains[0] = '@company.com'", "not a valid lower-case DNS name"],
    ),
    "allowed e-mail domains missing": (
        replace('allowed_email_domains = ["company.com"]\n', ""),
        ["staging.oidc.allowed_email_domains = (missing)", "required field is missing"],
    ),
    "backup copy in the same region": (
        replace('copy_vault_arn = ""', 'copy_vault_arn = "arn:aws:backup:us-west-2:555555555555:backup-vault:copies"'),
        ["staging.backup.copy_vault_arn = 'arn:aws:backup:us-west-2:555555555555:backup-vault:copies'",
         "the copy would stay in us-west-2", "a vault in another region"],
    ),
    "backup copy not a vault ARN": (
        replace('copy_vault_arn = ""', 'copy_vault_arn = "arn:aws:s3:::copies"'),
        ["staging.backup.copy_vault_arn = 'arn:aws:s3:::copies'", "not a backup vault ARN"],
    ),
    "task memory Fargate does not pair with the CPU": (
        replace("langfuse_worker = { cpu = 512, memory_mib = 1024 }", "langfuse_worker = { cpu = 512, memory_mib = 8192 }"),
        ["staging.tasks.langfuse_worker.memory_mib = 8192", "Fargate does not run 512 CPU units with it",
         "Allowed: 1024 to 4096 in steps of 1024"],
    ),
    "task CPU not a Fargate size": (
        replace("clickhouse = { cpu = 1024, memory_mib = 4096 }", "clickhouse = { cpu = 1000, memory_mib = 4096 }"),
        ["staging.tasks.clickhouse.cpu = 1000", "not a Fargate CPU size", "256, 512, 1024, 2048, 4096, 8192, 16384"],
    ),
    "allowed change without a real reason": (
        BASE + '\n[[environments.allowed_changes]]\nstack = "Data"\nlogical_id = "Postgres9DC8BB04"\nreason = "planned"\n',
        ["production.allowed_changes[0].reason = 'planned'", "at least 25 characters"],
    ),
    "allowed change in an unknown stack": (
        BASE + '\n[[environments.allowed_changes]]\nstack = "Database"\nlogical_id = "Postgres9DC8BB04"\n'
        'reason = "moving to a new engine with a restored snapshot"\n',
        ["production.allowed_changes[0].stack = 'Database'", "not a layer of the platform"],
    ),
    "allowed drift without a real reason": (
        BASE + '\n[[environments.allowed_drift]]\nstack = "Data"\nlogical_id = "Postgres9DC8BB04"\nreason = "known"\n',
        ["production.allowed_drift[0].reason = 'known'", "at least 25 characters"],
    ),
    "allowed drift in an unknown stack": (
        BASE + '\n[[environments.allowed_drift]]\nstack = "Pipeline"\nlogical_id = "Postgres9DC8BB04"\n'
        'reason = "a parameter changed by hand during the incident of May"\n',
        ["production.allowed_drift[0].stack = 'Pipeline'", "not a layer of the platform"],
    ),
    "deployment window not a cron expression": (
        replace('deployment_window = "* * 8-16 ? * MON-THU *"', 'deployment_window = "0 8-16 * * MON-THU"'),
        ["production.release.deployment_window = '0 8-16 * * MON-THU'", "not a deployment-window cron expression"],
    ),
    "deployment window with both day fields": (
        replace('deployment_window = "* * 8-16 ? * MON-THU *"', 'deployment_window = "* * 8-16 1 * MON-THU *"'),
        ["production.release.deployment_window", "day of month or day of week must be `?`"],
    ),
    "deployment window in an unknown time zone": (
        replace('time_zone = "UTC"\napproval_timeout_minutes', 'time_zone = "Europe/Atlantis"\napproval_timeout_minutes'),
        ["production.release.time_zone = 'Europe/Atlantis'", "not a time zone name of the IANA database"],
    ),
    "approval timeout without an approval": (
        replace("bake_minutes = 10\n", "bake_minutes = 10\napproval_timeout_minutes = 60\n"),
        ["staging.release.approval_timeout_minutes = 60", "this environment has no approval"],
    ),
    "approval timeout too short": (
        replace("approval_timeout_minutes = 1440", "approval_timeout_minutes = 3"),
        ["production.release.approval_timeout_minutes = 3", "shorter than CodePipeline's shortest approval timeout"],
    ),
    "bake longer than the smoke step can": (
        replace("bake_minutes = 30", "bake_minutes = 600"),
        ["production.release.bake_minutes = 600"],
    ),
    "approval not a boolean": (
        replace("requires_approval = true", 'requires_approval = "yes"'),
        ["production.requires_approval = 'yes'", "expected true or false, got str"],
    ),
    "storage max below allocated": (
        replace("max_allocated_storage_gb = 500", "max_allocated_storage_gb = 50"),
        ["production.database.max_allocated_storage_gb = 50", "smaller than allocated_storage_gb", ">= 100"],
    ),
    "db. prefix on the instance class": (
        replace('instance_class = "r6g.large"', 'instance_class = "db.r6g.large"'),
        ["production.database.instance_class = 'db.r6g.large'", "without the db. prefix"],
    ),
    "connection in another account": (
        replace("arn:aws:codeconnections:us-west-2:111111111111:", "arn:aws:codeconnections:us-west-2:999999999999:"),
        ["pipeline.connection_arn", "belongs to account 999999999999"],
    ),
    "bad notification e-mail": (
        replace('notification_email = ""', 'notification_email = "platform-team"'),
        ["pipeline.notification_email = 'platform-team'", "not an e-mail address"],
    ),
    "same domain twice": (
        replace('domain = "coder-staging.company.com"', 'domain = "coder.company.com"'),
        ["production.domain = 'coder.company.com'", "the same domain as staging"],
    ),
    "several Coder replicas": (
        replace("coder_desired_count = 1", "coder_desired_count = 2"),
        ["staging.services.coder_desired_count = 2", "Coder runs single-replica"],
    ),
    "project name too long for bucket names": (
        replace('name = "coder"', 'name = "platformcoderab"'),
        ["project.name = 'platformcoderab'", "would exceed 63 characters"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_message(case):
    text, fragments = BAD_INPUTS[case]
    problems = problems_of(text)
    joined = "\n".join(problems)
    for fragment in fragments:
        assert fragment in joined, f"{fragment!r} not in:\n{joined}"


def test_the_same_error_in_every_environment_is_said_once_each_and_nothing_else():
    """Every environment failing made pydantic add `environments = [<the whole config>]: needs at least 1 item(s)`."""
    problems = problems_of(replace("coder_desired_count = 1", "coder_desired_count = 0", count=2))
    assert problems == [
        "staging.services.coder_desired_count = 0: Coder runs single-replica. Allowed: 1.",
        "production.services.coder_desired_count = 0: Coder runs single-replica. Allowed: 1.",
    ]
    assert all(len(problem) < 300 for problem in problems_of(replace("[project]", "[project]\nextra = [" + "1, " * 200 + "1]")))


def test_toml_syntax_error_names_the_line():
    broken = BASE.replace('branch = "main"', 'branch = "main', 1)
    line = BASE[: BASE.index('branch = "main"')].count("\n") + 1
    (problem,) = problems_of(broken)
    assert problem.startswith("TOML syntax error:")
    assert f"line {line}" in problem


def test_every_problem_is_reported_at_once():
    text = replace('account = "222222222222"', 'account = "x"').replace("litellm_desired_count = 2", "litellm_desired_count = -1", 1)
    problems = problems_of(text)
    assert len(problems) == 2
    assert any(p.startswith("staging.account") for p in problems)
    assert any(p.startswith("staging.services.litellm_desired_count") for p in problems)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert "cannot read the file" in str(caught.value)


def test_a_pipeline_in_a_region_of_no_environment_is_allowed():
    """CDK Pipelines' cross-region support stacks carry the artifacts to the environments' region."""
    from pipeline.bootstrap import targets

    text = BASE.replace('connection_arn = "arn:aws:codeconnections:us-west-2:', 'connection_arn = "arn:aws:codeconnections:us-east-1:')
    text = text.replace('[pipeline]\n', '[pipeline]\nregion = "us-east-1"\n', 1)
    text = re.sub(r'(\[pipeline\][^\[]*?)\nregion = "us-west-2"', r"\1", text, count=1)
    config = parse_config(text, "pipeline-elsewhere.toml")
    assert config.pipeline.region == "us-east-1" and {e.region for e in config.environments} == {"us-west-2"}
    assert [(t.key, t.account, t.region, t.trust) for t in targets(config)] == [
        ("pipeline", "111111111111", "us-east-1", None), ("staging", "222222222222", "us-west-2", "111111111111"),
        ("production", "333333333333", "us-west-2", "111111111111")]


def test_same_account_for_both_environments_is_allowed():
    text = BASE.replace('account = "333333333333"', 'account = "222222222222"').replace(
        "333333333333.dkr.ecr", "222222222222.dkr.ecr")
    staging, production = parse_config(text, "same-account.toml").environments
    assert staging.account == production.account
    assert staging.bucket_name(Bucket.BACKUPS) != production.bucket_name(Bucket.BACKUPS)
    assert staging.secret_name("rds/master") != production.secret_name("rds/master")


def _run_app(config_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CDK_CONTEXT_JSON=json.dumps({"config": str(config_path)}), CDK_OUTDIR=str(config_path.parent / "out"))
    return subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_app_exits_non_zero_with_the_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(replace('vpc_cidr = "10.1.0.0/16"', 'vpc_cidr = "10.1.0.0/33"'))
    result = _run_app(bad)
    assert result.returncode == 2
    assert "staging.network.vpc_cidr = '10.1.0.0/33'" in result.stderr
    assert f"Invalid configuration in {bad}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not re.search(r"jsii|at .*\.js:\d+", result.stderr)
    assert not (tmp_path / "out" / "manifest.json").exists()  # nothing synthesized


def test_app_run_without_the_cli_says_how_to_run_it(tmp_path):
    """`python app.py` without the CLI's context (cdk.json's feature flags) stopped after ~10 s in the CDK's kernel with
    KeyMustResolveToString; it now says how to run it, before the kernel starts."""
    env = {name: value for name, value in os.environ.items() if name != "CDK_CONTEXT_JSON"}
    env["CDK_OUTDIR"] = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: app.py is run by the CDK CLI")
    assert "`make synth`" in result.stderr and "-c config=PATH" in result.stderr
    assert "Traceback" not in result.stderr and "jsii" not in result.stderr
    assert not (tmp_path / "out").exists()


# Each upstream's production minimum (vCPU units, MiB), as config/environments.toml cites them.
UPSTREAM_PRODUCTION_MINIMUMS = {
    "coder": (2048, 4096),  # Coder: 2 cores / 4 GB for a control plane with its own provisioners
    "litellm": (4096, 8192),  # LiteLLM production guide: 4 vCPU / 8 GB
    "langfuse_web": (2048, 4096),  # Langfuse scaling guide: web 2 CPU / 4 GiB
    "langfuse_worker": (2048, 4096),  # worker 2 CPU / 4 GiB
    "clickhouse": (2048, 8192),  # ClickHouse 2 CPU / 8 GiB
}


def test_production_runs_each_app_at_least_at_its_upstream_minimum():
    for environment in load_config(DEFAULT_CONFIG_PATH).environments:
        if not environment.is_production:
            continue
        for service, (cpu, memory_mib) in UPSTREAM_PRODUCTION_MINIMUMS.items():
            size = getattr(environment.tasks, service)
            assert size.cpu >= cpu and size.memory_mib >= memory_mib, (service, size)


def test_the_config_says_how_the_azure_ad_app_gives_coder_its_upn_claim():
    """Coder reads the e-mail from `upn` (CODER_OIDC_EMAIL_FIELD): without that optional claim nobody signs in."""
    text = DEFAULT_CONFIG_PATH.read_text()
    assert "add the optional claim `upn` to the ID token" in text


def test_every_field_of_the_shipped_file_is_commented():
    """As the README says: in [project], [pipeline] and the first environment (the others repeat its fields), each
    field has a comment on its line or above its group of fields."""
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    second = [i for i, line in enumerate(lines) if line.strip() == "[[environments]]"][1]
    uncommented = []
    for index, line in enumerate(lines[:second]):
        stripped = line.strip()
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]* = ", stripped) or "#" in stripped.split("=", 1)[1]:
            continue
        above = index - 1
        while above >= 0 and re.match(r"^[A-Za-z_][A-Za-z0-9_]* = ", lines[above].strip()):
            above -= 1
        if above < 0 or not lines[above].strip().startswith("#"):
            uncommented.append(stripped.split(" =")[0])
    assert uncommented == []


def test_a_connection_not_created_yet_is_allowed_and_flagged():
    """connection_arn = "" loads (step 1 of `make bootstrap` creates it); synth builds with a placeholder, and the
    empty value is an example value: nothing deploys with it."""
    config = parse_config(BASE.replace(
        'connection_arn = "arn:aws:codeconnections:us-west-2:111111111111:connection/00000000-0000-4000-8000-000000000000"',
        'connection_arn = ""'), "new.toml")
    assert ("pipeline.connection_arn", "") in config.pipeline.example_values()
    assert config.pipeline.source_connection_arn() == (
        "arn:aws:codeconnections:us-west-2:111111111111:connection/00000000-0000-4000-8000-000000000000")
