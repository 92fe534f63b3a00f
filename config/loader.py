"""Load and validate the environments file into ``AppConfig``.

Validation runs before any construct exists. Every problem is reported as one line naming the file,
the environment, the field, the bad value and what is allowed; all problems found are reported together.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from config.model import (
    AppConfig,
    DatabaseConfig,
    EnvironmentConfig,
    EnvironmentName,
    FeaturesConfig,
    ImagesConfig,
    NetworkConfig,
    OidcConfig,
    PipelineConfig,
    RedisConfig,
    ServicesConfig,
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "environments.toml"

ACCOUNT_RE = re.compile(r"^\d{12}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
PROJECT_RE = re.compile(r"^[a-z][a-z0-9]{1,14}$")
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOSTED_ZONE_RE = re.compile(r"^Z[A-Z0-9]{1,31}$")
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
BRANCH_RE = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)[A-Za-z0-9._/-]+(?<!/)$")
CONNECTION_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:(codeconnections|codestar-connections):(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"connection/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
DB_INSTANCE_CLASS_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
CACHE_NODE_TYPE_RE = re.compile(r"^cache\.[a-z][a-z0-9-]*\.[a-z0-9]+$")
TAG_KEY_RE = re.compile(r"^(?!aws:)[\w .:/=+@-]{1,128}$")
# registry[:port]/path[:tag][@sha256:digest], the Docker reference grammar reduced to what we accept
IMAGE_RE = re.compile(
    r"^(?P<name>(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
ECR_IMAGE_RE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/")
VPC_PREFIX_RANGE = (16, 24)
LONGEST_BUCKET_SUFFIX = "terraform-state"  # S3 names are {project}-{environment}-{suffix}-{account}-{region}
SUBNET_PREFIX_RANGE = (16, 28)


class ConfigError(Exception):
    """Raised with every problem found; ``str()`` is the full message for the user."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"Invalid configuration in {source}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, value: Any, problem: str, allowed: str) -> None:
        shown = repr(value) if not isinstance(value, _Missing) else "(missing)"
        self.items.append(f"{where} = {shown}: {problem}. Allowed: {allowed}.")


class _Missing:
    pass


MISSING = _Missing()


class _Table:
    """A TOML table read field by field; unknown keys and missing keys become problems."""

    def __init__(self, data: Any, where: str, problems: _Problems):
        self.where = where
        self.problems = problems
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not isinstance(data, dict):
            problems.add(where, data, "expected a table", f"a [{where}] table")

    def _label(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(
        self,
        key: str,
        check: Callable[[Any], str | None],
        allowed: str,
        *,
        default: Any = MISSING,
    ) -> Any:
        """Return the value if ``check`` finds nothing wrong (``check`` returns a problem or None)."""
        self.seen.add(key)
        if key not in self.data:
            if default is not MISSING:
                return default
            self.problems.add(self._label(key), MISSING, "required field is missing", allowed)
            return None
        value = self.data[key]
        problem = check(value)
        if problem:
            self.problems.add(self._label(key), value, problem, allowed)
            return None
        return value

    def table(self, key: str) -> _Table:
        self.seen.add(key)
        if key not in self.data:
            self.problems.add(self._label(key), MISSING, "required table is missing", f"a [{self._label(key)}] table")
            return _Table({}, self._label(key), _Problems())  # read silently: the table itself was reported
        return _Table(self.data[key], self._label(key), self.problems)

    def finish(self) -> None:
        """Refuse keys nobody asked for (typos would otherwise be silently ignored)."""
        for key in sorted(set(self.data) - self.seen):
            self.problems.add(self._label(key), self.data[key], "unknown key", f"one of {', '.join(sorted(self.seen))}")


# --- field checks: each returns None when the value is fine, else what is wrong -----------------------------


def _string(pattern: re.Pattern[str] | None = None, what: str = "does not match the expected format"):
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected a string, got {type(value).__name__}"
        if pattern is not None and not pattern.match(value):
            return what
        return None

    return check


def _integer(minimum: int, maximum: int | None = None):
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {type(value).__name__}"
        if value < minimum or (maximum is not None and value > maximum):
            return "out of range"
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {type(value).__name__}"


def _string_list(pattern: re.Pattern[str] | None = None, what: str = "bad item", min_items: int = 1):
    item_check = _string(pattern, what)

    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list, got {type(value).__name__}"
        if len(value) < min_items:
            return f"needs at least {min_items} item(s)"
        for item in value:
            problem = item_check(item)
            if problem:
                return f"item {item!r}: {problem}"
        if len(set(value)) != len(value):
            return "items must be unique"
        return None

    return check


def _domain(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(LABEL_RE.match(label) for label in labels):
        return "not a valid lower-case DNS name"
    if labels[-1].isdigit():
        return "the top-level label cannot be numeric"
    return None


def _https_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    match = re.match(r"^https://(?P<host>[^/:?#\s]+)(:\d+)?(?P<rest>[/?#]\S*)?$", value)
    if not match:
        return "not an https URL"
    if _domain(match.group("host")):
        return f"host {match.group('host')!r} is not a valid DNS name"
    if "{" in value or "}" in value:
        return "contains a template placeholder"
    return None


def _image(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    match = IMAGE_RE.match(value)
    if not match:
        return "not a valid image reference"
    tag, digest = match.group("tag"), match.group("digest")
    if not tag and not digest:
        return "the image is not pinned (no tag and no digest)"
    if tag and "latest" in tag.lower():
        return f"tag {tag!r} moves over time"
    return None


def _ecr_image(value: Any) -> str | None:
    return _image(value) or (None if ECR_IMAGE_RE.match(value) else "not an ECR image URI")


def _network(value: Any) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError):
        return None


def _cidr(prefix_range: tuple[int, int]):
    low, high = prefix_range

    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected a string, got {type(value).__name__}"
        network = _network(value)
        if network is None:
            return "not an IPv4 network in CIDR notation (host bits must be zero)"
        if not low <= network.prefixlen <= high:
            return f"prefix /{network.prefixlen} is out of range"
        return None

    return check


def _cidr_list(prefix_range: tuple[int, int]):
    item = _cidr(prefix_range)
    base = _string_list()

    def check(value: Any) -> str | None:
        problem = base(value)
        if problem:
            return problem
        for cidr in value:
            problem = item(cidr)
            if problem:
                return f"item {cidr!r}: {problem}"
        return None

    return check


# --- sections ---------------------------------------------------------------------------------------------------


def _read_pipeline(table: _Table) -> PipelineConfig | None:
    account = table.get("account", _string(ACCOUNT_RE, "not a 12-digit AWS account id"), "a 12-digit AWS account id")
    region = table.get("region", _string(REGION_RE, "not an AWS region name"), "an AWS region such as us-west-2")
    repository = table.get(
        "repository", _string(REPOSITORY_RE, "not in owner/name form"), "the source repository as owner/name"
    )
    branch = table.get("branch", _string(BRANCH_RE, "not a valid git branch name"), "a git branch name such as main")
    connection_arn = table.get(
        "connection_arn",
        _string(CONNECTION_ARN_RE, "not a CodeConnections connection ARN"),
        "arn:aws:codeconnections:<region>:<account>:connection/<uuid>",
    )
    email = table.get(
        "notification_email",
        _string(re.compile(r"^$|" + EMAIL_RE.pattern), "not an e-mail address"),
        'an e-mail address, or "" for no subscription',
        default="",
    )
    table.finish()
    if None in (account, region, repository, branch, connection_arn, email):
        return None
    match = CONNECTION_ARN_RE.match(connection_arn)
    if match and match.group("account") != account:
        table.problems.add(
            f"{table.where}.connection_arn",
            connection_arn,
            f"the connection belongs to account {match.group('account')}, not the pipeline account",
            f"a connection in account {account}",
        )
        return None
    return PipelineConfig(account, region, repository, branch, connection_arn, email or None)


def _read_network(table: _Table, region: str | None) -> NetworkConfig | None:
    az_pattern = re.compile(rf"^{re.escape(region)}[a-z]$") if region else re.compile(r"^[a-z0-9-]+[a-z]$")
    where_region = f"in {region}" if region else "in the region"
    vpc_cidr = table.get(
        "vpc_cidr", _cidr(VPC_PREFIX_RANGE), f"an IPv4 CIDR from /{VPC_PREFIX_RANGE[0]} to /{VPC_PREFIX_RANGE[1]}"
    )
    azs = table.get(
        "availability_zones",
        _string_list(az_pattern, f"not an availability zone {where_region}", min_items=2),
        f"two or more distinct availability zone names {where_region}, e.g. {region or 'us-west-2'}a",
    )
    tiers: dict[str, list[str] | None] = {}
    for tier in ("public_subnet_cidrs", "app_subnet_cidrs", "data_subnet_cidrs"):
        tiers[tier] = table.get(
            tier,
            _cidr_list(SUBNET_PREFIX_RANGE),
            f"one IPv4 CIDR per availability zone, /{SUBNET_PREFIX_RANGE[0]} to /{SUBNET_PREFIX_RANGE[1]}, inside vpc_cidr",
        )
    nat_gateways = table.get("nat_gateways", _integer(1, 16), "an integer from 1 to the number of AZs")
    table.finish()
    if vpc_cidr is None or azs is None or nat_gateways is None or None in tiers.values():
        return None

    ok = True
    vpc = ipaddress.IPv4Network(vpc_cidr)
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    for tier, cidrs in tiers.items():
        label = f"{table.where}.{tier}"
        if len(cidrs) != len(azs):
            table.problems.add(label, cidrs, f"{len(cidrs)} subnet(s) for {len(azs)} availability zones", "one per AZ")
            ok = False
        for cidr in cidrs:
            subnet = ipaddress.IPv4Network(cidr)
            if not subnet.subnet_of(vpc):
                table.problems.add(label, cidr, f"outside the VPC {vpc_cidr}", f"a subnet of {vpc_cidr}")
                ok = False
            for other_label, other in seen:
                if subnet.overlaps(other):
                    table.problems.add(label, cidr, f"overlaps {other} in {other_label}", "non-overlapping subnets")
                    ok = False
            seen.append((label, subnet))
    if nat_gateways > len(azs):
        table.problems.add(f"{table.where}.nat_gateways", nat_gateways, "more NAT gateways than AZs", f"1 to {len(azs)}")
        ok = False
    if not ok:
        return None
    return NetworkConfig(
        vpc_cidr=vpc_cidr,
        availability_zones=tuple(azs),
        public_subnet_cidrs=tuple(tiers["public_subnet_cidrs"]),
        app_subnet_cidrs=tuple(tiers["app_subnet_cidrs"]),
        data_subnet_cidrs=tuple(tiers["data_subnet_cidrs"]),
        nat_gateways=nat_gateways,
    )


def _read_database(table: _Table) -> DatabaseConfig | None:
    instance_class = table.get(
        "instance_class",
        lambda v: ("write the class without the db. prefix" if isinstance(v, str) and v.startswith("db.") else None)
        or _string(DB_INSTANCE_CLASS_RE, "not an instance class")(v),
        'an RDS instance class without "db.", e.g. r6g.large',
    )
    allocated = table.get("allocated_storage_gb", _integer(20, 65536), "an integer from 20 to 65536 (GiB)")
    maximum = table.get("max_allocated_storage_gb", _integer(20, 65536), "an integer from 20 to 65536 (GiB)")
    backups = table.get("backup_retention_days", _integer(1, 35), "an integer from 1 to 35 (days)")
    multi_az = table.get("multi_az", _boolean, "true or false")
    deletion_protection = table.get("deletion_protection", _boolean, "true or false")
    table.finish()
    values = (instance_class, allocated, maximum, backups, multi_az, deletion_protection)
    if None in values:
        return None
    if maximum < allocated:
        table.problems.add(
            f"{table.where}.max_allocated_storage_gb", maximum, "smaller than allocated_storage_gb", f">= {allocated}"
        )
        return None
    return DatabaseConfig(*values)


def _read_redis(table: _Table) -> RedisConfig | None:
    node_type = table.get(
        "node_type", _string(CACHE_NODE_TYPE_RE, "not an ElastiCache node type"), "a node type such as cache.r6g.large"
    )
    retention = table.get("snapshot_retention_days", _integer(1, 35), "an integer from 1 to 35 (days)")
    table.finish()
    if None in (node_type, retention):
        return None
    return RedisConfig(node_type, retention)


def _read_images(table: _Table) -> ImagesConfig | None:
    pinned = "an image pinned by an exact version tag or an @sha256 digest (no latest)"
    values = {
        key: table.get(key, _image, pinned)
        for key in ("coder", "litellm", "langfuse", "langfuse_worker", "clickhouse")
    }
    values["key_provisioner"] = table.get(
        "key_provisioner", _ecr_image, "an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/name:tag) pinned by tag or digest"
    )
    table.finish()
    if None in values.values():
        return None
    return ImagesConfig(**values)


def _read_services(table: _Table) -> ServicesConfig | None:
    values = {
        key: table.get(key, _integer(1, 100), "an integer from 1 to 100")
        for key in (
            "coder_desired_count",
            "litellm_desired_count",
            "key_provisioner_desired_count",
            "langfuse_web_desired_count",
            "langfuse_worker_desired_count",
        )
    }
    table.finish()
    if None in values.values():
        return None
    if values["coder_desired_count"] != 1:
        # Several Coder replicas need Coder's licensed high-availability feature.
        table.problems.add(f"{table.where}.coder_desired_count", values["coder_desired_count"], "Coder runs single-replica", "1")
        return None
    return ServicesConfig(**values)


_SECRET_VERSION = re.compile(r"^$|^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CLIENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _read_oidc(table: _Table) -> OidcConfig | None:
    values = {
        "client_id": table.get(
            "client_id", _string(_CLIENT_ID, "not an application (client) id"), "a lower-case GUID, as Azure AD shows it"
        )
    }
    values.update(
        {
            key: table.get(key, _https_url, "an https URL with a real host (no {placeholders})")
            for key in ("issuer_url", "authorization_endpoint", "token_endpoint", "user_info_endpoint")
        }
    )
    values["client_secret_version"] = table.get(
        "client_secret_version",
        _string(_SECRET_VERSION, "not a Secrets Manager version id"),
        '"" or the VersionId that put-secret-value printed',
        default="",
    )
    table.finish()
    if None in values.values():
        return None
    values["client_secret_version"] = values["client_secret_version"] or None
    return OidcConfig(**values)


def _read_features(table: _Table) -> FeaturesConfig | None:
    values = {
        key: table.get(key, _boolean, "true or false")
        for key in ("enable_docker_workspaces", "enable_workspace_direct_access")
    }
    table.finish()
    if None in values.values():
        return None
    return FeaturesConfig(**values)


def _tags(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected a table, got {type(value).__name__}"
    for key, tag_value in value.items():
        if not TAG_KEY_RE.match(key):
            return f"tag key {key!r} is not allowed"
        if not isinstance(tag_value, str) or len(tag_value) > 256:
            return f"tag {key!r} needs a string value of at most 256 characters"
    return None


def _read_environment(name: EnvironmentName, project: str | None, table: _Table) -> EnvironmentConfig | None:
    account = table.get("account", _string(ACCOUNT_RE, "not a 12-digit AWS account id"), "a 12-digit AWS account id")
    region = table.get("region", _string(REGION_RE, "not an AWS region name"), "an AWS region such as us-west-2")
    domain = table.get("domain", _domain, "a lower-case DNS name such as coder.example.com")
    hosted_zone_id = table.get(
        "hosted_zone_id",
        _string(re.compile(r"^$|" + HOSTED_ZONE_RE.pattern), "not a Route 53 hosted zone id"),
        'a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ, or "" for no DNS validation',
        default="",
    )
    custom_llm = table.get("custom_llm_api_base", _https_url, "an https URL")
    tags = table.get("tags", _tags, "a table of string tags (keys not starting with aws:)", default={})
    sections = {
        "network": _read_network(table.table("network"), region),
        "database": _read_database(table.table("database")),
        "redis": _read_redis(table.table("redis")),
        "images": _read_images(table.table("images")),
        "services": _read_services(table.table("services")),
        "oidc": _read_oidc(table.table("oidc")),
        "features": _read_features(table.table("features")),
    }
    table.finish()
    if None in (project, account, region, domain, hosted_zone_id, custom_llm, tags) or None in sections.values():
        return None
    longest_bucket = f"{project}-{name.value}-{LONGEST_BUCKET_SUFFIX}-{account}-{region}"
    if len(longest_bucket) > 63:
        table.problems.add(
            "project.name", project, f"bucket name {longest_bucket!r} would exceed 63 characters", "a shorter project name"
        )
        return None
    return EnvironmentConfig(
        name=name,
        project=project,
        account=account,
        region=region,
        domain=domain,
        hosted_zone_id=hosted_zone_id or None,
        custom_llm_api_base=custom_llm,
        tags=MappingProxyType(
            {"Project": project, "Environment": name.value, "ManagedBy": "cdk", **tags}
        ),
        **sections,
    )


def parse_config(text: str, source: str) -> AppConfig:
    """Validate TOML text; raise ``ConfigError`` listing every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [f"TOML syntax error: {error}"]) from None

    problems = _Problems()
    root = _Table(data, "", problems)

    project_table = root.table("project")
    project = project_table.get(
        "name", _string(PROJECT_RE, "not a short lower-case name"), "2 to 15 lower-case letters and digits, starting with a letter"
    )
    project_table.finish()
    pipeline = _read_pipeline(root.table("pipeline"))
    environments = {
        name: _read_environment(name, project, root.table(name.value)) for name in EnvironmentName
    }
    root.finish()

    staging, production = environments[EnvironmentName.STAGING], environments[EnvironmentName.PRODUCTION]
    if staging and production and staging.domain == production.domain:
        problems.add("production.domain", production.domain, "the same domain as staging", "a domain of its own")
    if pipeline and staging and production and pipeline.region not in {staging.region, production.region}:
        # Cross-region promotion adds CDK's replication support stacks, which this project does not build or test.
        problems.add(
            "pipeline.region", pipeline.region, "differs from both environments", f"{staging.region} or {production.region}"
        )
    if problems.items:
        raise ConfigError(source, problems.items)
    assert pipeline and staging and production and project
    return AppConfig(project=project, pipeline=pipeline, staging=staging, production=production)


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read and validate a config file (default: ``config/environments.toml``)."""
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(config_path), [f"cannot read the file: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(config_path), ["the file is not UTF-8 text"]) from None
    return parse_config(text, str(config_path))
