"""The configuration model: every field's type, constraints and allowed values, declared once (pydantic v2).

The model is the contract of `config/environments.toml`: `config.loader` validates a file against it and turns every
problem into one line (`env.section.field = value: problem. Allowed: ...`); `python -m config.schema` writes the JSON
Schema editors use to check the file as it is typed. Instances are frozen. Stacks and constructs read only this model,
never files, the environment or AWS.

A field's `description` is the "Allowed: ..." text of its error messages. A rule that spans fields is a model
validator that reports `Problem`s, each naming the field it is about.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

PRODUCTION = "production"
# Secrets keep the seed's `prod/...` names in production; every other environment uses its own name as prefix.
PRODUCTION_SECRET_PREFIX = "prod"  # noqa: S105 - a name prefix, not a password
# Environment names that would collide with the pipeline's own stages or constructs once capitalised.
RESERVED_ENVIRONMENT_NAMES = ("pipeline", "source", "build", "assets", "notifications")

ACCOUNT = r"^\d{12}$"
REGION = r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$"
PROJECT = r"^[a-z][a-z0-9]{1,14}$"
ENVIRONMENT = r"^[a-z][a-z0-9]{1,14}$"
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOSTED_ZONE = r"^$|^Z[A-Z0-9]{1,31}$"
REPOSITORY = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
BRANCH = r"^(?!/)(?!.*//)(?!.*\.\.)[A-Za-z0-9._/-]+(?<!/)$"
CONNECTION_ARN = re.compile(
    r"^arn:aws[a-z-]*:(codeconnections|codestar-connections):(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"connection/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
EMAIL = r"^$|^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
DB_INSTANCE_CLASS = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
CACHE_NODE_TYPE = r"^cache\.[a-z][a-z0-9-]*\.[a-z0-9]+$"
TAG_KEY = re.compile(r"^(?!aws:)[\w .:/=+@-]{1,128}$")
GUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# registry[:port]/path[:tag][@sha256:digest], the Docker reference grammar reduced to what we accept
IMAGE = re.compile(
    r"^(?P<name>(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
# <account>.dkr.ecr.<region>.amazonaws.com/<repository>(:<tag>|@<digest>): the one rule for ECR image references.
ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+)|@(?P<digest>sha256:[0-9a-f]{64}))$"
)
# Example values of the shipped files: synth works with them, a deploy must not (`example_values`).
EXAMPLE_ACCOUNT = re.compile(r"^(\d)\1{11}$")  # 111111111111, 222222222222, ...
EXAMPLE_DOMAINS = ("company.com", "example.com", "example.org", "example.net")
ZERO_GUID = "00000000-0000-0000-0000-000000000000"
VPC_PREFIXES = (16, 24)
SUBNET_PREFIXES = (16, 28)
MAX_BUCKET_NAME = 63
MIN_ALLOWANCE_REASON = 25


class Bucket(StrEnum):
    """The environment's S3 buckets, by purpose; the value is the name's suffix (`EnvironmentConfig.bucket_name`)."""

    TERRAFORM_STATE = "terraform-state"
    BACKUPS = "backups"
    ARTIFACTS = "artifacts"
    LANGFUSE_EVENTS = "langfuse-events"
    LANGFUSE_MEDIA = "langfuse-media"
    ACCESS_LOGS = "access-logs"


LONGEST_BUCKET_SUFFIX = max((b.value for b in Bucket), key=len)


# --- field types --------------------------------------------------------------------------------------------------


def problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("config", message)


def _checked(base: Any, allowed: str, check: Callable[[Any], str | None], **schema: Any) -> Any:
    """A field type: `base`, then `check` (returns what is wrong, or None); `allowed` is its description."""

    def validate(value: Any) -> Any:
        wrong = check(value)
        if wrong:
            raise problem(wrong)
        return value

    return Annotated[base, AfterValidator(validate), Field(description=allowed, json_schema_extra=schema or None)]


def text(pattern: str, wrong: str, allowed: str, *, schema_pattern: bool = True) -> Any:
    """A string matching `pattern` (also written into the JSON Schema unless the regex uses look-around)."""
    regex = re.compile(pattern)
    return _checked(
        StrictStr, allowed, lambda v: None if regex.match(v) else wrong, **({"pattern": pattern} if schema_pattern else {})
    )


def integer(minimum: int, maximum: int, allowed: str) -> Any:
    return Annotated[StrictInt, Field(ge=minimum, le=maximum, description=allowed)]


def flag(allowed: str = "true or false") -> Any:
    return Annotated[StrictBool, Field(description=allowed)]


def _domain(value: str) -> str | None:
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(LABEL.match(label) for label in labels):
        return "not a valid lower-case DNS name"
    if labels[-1].isdigit():
        return "the top-level label cannot be numeric"
    return None


def _https_url(value: str) -> str | None:
    match = re.match(r"^https://(?P<host>[^/:?#\s]+)(:\d+)?(?P<rest>[/?#]\S*)?$", value)
    if not match:
        return "not an https URL"
    if _domain(match.group("host")):
        return f"host {match.group('host')!r} is not a valid DNS name"
    if "{" in value or "}" in value:
        return "contains a template placeholder"
    return None


def _image(value: str) -> str | None:
    match = IMAGE.match(value)
    if not match:
        return "not a valid image reference"
    tag, digest = match.group("tag"), match.group("digest")
    if not tag and not digest:
        return "the image is not pinned (no tag and no digest)"
    if tag and "latest" in tag.lower():
        return f"tag {tag!r} moves over time"
    return None


def _ecr_image(value: str) -> str | None:
    return _image(value) or (None if ECR_IMAGE.match(value) else "not an ECR image URI")


def _cidr(prefixes: tuple[int, int]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            network = ipaddress.IPv4Network(value, strict=True)
        except ValueError:
            return "not an IPv4 network in CIDR notation (host bits must be zero)"
        if not prefixes[0] <= network.prefixlen <= prefixes[1]:
            return f"prefix /{network.prefixlen} is out of range"
        return None

    return check


def _unique(items: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(set(items)) != len(items):
        raise problem("items must be unique")
    return items


def _tags(value: dict[str, str]) -> Mapping[str, str]:
    for key, tag_value in value.items():
        if not TAG_KEY.match(key):
            raise problem(f"tag key {key!r} is not allowed")
        if len(tag_value) > 256:
            raise problem(f"tag {key!r} needs a string value of at most 256 characters")
    return MappingProxyType(dict(value))


Account = text(ACCOUNT, "not a 12-digit AWS account id", "a 12-digit AWS account id")
Region = text(REGION, "not an AWS region name", "an AWS region such as us-west-2")
Domain = _checked(StrictStr, "a lower-case DNS name such as coder.example.com", _domain)
HttpsUrl = _checked(StrictStr, "an https URL with a real host (no {placeholders})", _https_url)
Image = _checked(StrictStr, "an image pinned by an exact version tag or an @sha256 digest (no latest)", _image)
SubnetCidrs = Annotated[
    tuple[_checked(StrictStr, "an IPv4 CIDR", _cidr(SUBNET_PREFIXES)), ...],
    Field(
        min_length=1,
        description=f"one IPv4 CIDR per availability zone, /{SUBNET_PREFIXES[0]} to /{SUBNET_PREFIXES[1]}, inside vpc_cidr",
    ),
    AfterValidator(_unique),
]


class Problem(NamedTuple):
    """A broken rule that spans fields: where (relative to the model that checks it), the value, what is wrong."""

    loc: tuple[str | int, ...]
    value: Any
    problem: str
    allowed: str


def report(problems: list[Problem]) -> None:
    if problems:
        raise PydanticCustomError("config_rules", "{count} problem(s)", {"count": len(problems), "problems": problems})


class Section(BaseModel):
    """A TOML table: frozen, unknown keys refused, no silent type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- sections -----------------------------------------------------------------------------------------------------


class ProjectConfig(Section):
    name: text(PROJECT, "not a short lower-case name", "2 to 15 lower-case letters and digits, starting with a letter")


def _example_domain(domain: str) -> bool:
    return any(domain == d or domain.endswith(f".{d}") for d in EXAMPLE_DOMAINS)


class PipelineConfig(Section):
    """The tools account that hosts CodePipeline, and where its source comes from."""

    def example_values(self) -> list[tuple[str, str]]:
        """(field, value) of each example value left in this section."""
        found = []
        if EXAMPLE_ACCOUNT.match(self.account):
            found.append(("pipeline.account", self.account))
        if not self.connection_arn or "/00000000-" in self.connection_arn:
            found.append(("pipeline.connection_arn", self.connection_arn))
        if self.repository.split("/")[0] in ("example", "example-org"):
            found.append(("pipeline.repository", self.repository))
        return found

    account: Account
    region: Region
    repository: text(REPOSITORY, "not in owner/name form", "the source repository as owner/name")
    branch: text(BRANCH, "not a valid git branch name", "a git branch name such as main", schema_pattern=False)
    connection_arn: _checked(
        StrictStr,
        '"" (not created yet: `make bootstrap` says how) or arn:aws:codeconnections:<region>:<account>:connection/<uuid>',
        lambda v: None if v == "" or CONNECTION_ARN.match(v) else "not a CodeConnections connection ARN",
    ) = ""
    notification_email: text(EMAIL, "not an e-mail address", 'an e-mail address, or "" for no subscription') = ""

    def source_connection_arn(self) -> str:
        """The connection the pipeline's source uses: a placeholder while it is not created yet (synth works; the
        placeholder is an example value, so nothing deploys with it)."""
        return self.connection_arn or (f"arn:aws:codeconnections:{self.region}:{self.account}:connection/"
                                       "00000000-0000-4000-8000-000000000000")

    @model_validator(mode="after")
    def _connection_in_pipeline_account(self) -> PipelineConfig:
        match = CONNECTION_ARN.match(self.connection_arn)
        if match and match.group("account") != self.account:
            report([Problem(("connection_arn",), self.connection_arn,
                            f"the connection belongs to account {match.group('account')}, not the pipeline account",
                            f"a connection in account {self.account}")])
        return self


class NetworkConfig(Section):
    vpc_cidr: _checked(
        StrictStr, f"an IPv4 CIDR from /{VPC_PREFIXES[0]} to /{VPC_PREFIXES[1]}", _cidr(VPC_PREFIXES)
    )
    availability_zones: Annotated[
        tuple[StrictStr, ...],
        Field(min_length=2, description="two or more distinct availability zone names of the region, e.g. us-west-2a"),
        AfterValidator(_unique),
    ]
    public_subnet_cidrs: SubnetCidrs
    app_subnet_cidrs: SubnetCidrs
    data_subnet_cidrs: SubnetCidrs
    nat_gateways: integer(1, 16, "an integer from 1 to the number of AZs")

    @property
    def tiers(self) -> dict[str, tuple[str, ...]]:
        return {
            "public_subnet_cidrs": self.public_subnet_cidrs,
            "app_subnet_cidrs": self.app_subnet_cidrs,
            "data_subnet_cidrs": self.data_subnet_cidrs,
        }

    @model_validator(mode="after")
    def _address_plan(self) -> NetworkConfig:
        problems = []
        vpc = ipaddress.IPv4Network(self.vpc_cidr)
        seen: list[tuple[str, ipaddress.IPv4Network]] = []
        for tier, cidrs in self.tiers.items():
            if len(cidrs) != len(self.availability_zones):
                problems.append(Problem((tier,), list(cidrs),
                                        f"{len(cidrs)} subnet(s) for {len(self.availability_zones)} availability zones",
                                        "one per AZ"))
            for cidr in cidrs:
                subnet = ipaddress.IPv4Network(cidr)
                if not subnet.subnet_of(vpc):
                    problems.append(Problem((tier,), cidr, f"outside the VPC {self.vpc_cidr}", f"a subnet of {self.vpc_cidr}"))
                for other_tier, other in seen:
                    if subnet.overlaps(other):
                        problems.append(Problem((tier,), cidr, f"overlaps {other} in {other_tier}", "non-overlapping subnets"))
                seen.append((tier, subnet))
        if self.nat_gateways > len(self.availability_zones):
            problems.append(Problem(("nat_gateways",), self.nat_gateways, "more NAT gateways than AZs",
                                    f"1 to {len(self.availability_zones)}"))
        report(problems)
        return self


RDS_SNAPSHOT_ARN = re.compile(r"^arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:snapshot:[A-Za-z][A-Za-z0-9:-]{0,254}$")


class DatabaseConfig(Section):
    instance_class: _checked(
        StrictStr,
        'an RDS instance class without "db.", e.g. r6g.large',
        lambda v: "write the class without the db. prefix" if v.startswith("db.")
        else (None if re.match(DB_INSTANCE_CLASS, v) else "not an instance class"),
    )
    allocated_storage_gb: integer(20, 65536, "an integer from 20 to 65536 (GiB)")
    max_allocated_storage_gb: integer(20, 65536, "an integer from 20 to 65536 (GiB)")
    backup_retention_days: integer(1, 35, "an integer from 1 to 35 (days)")
    multi_az: flag()
    deletion_protection: flag()
    # Taking over the Terraform deployment (`make adopt`): the database is restored from this snapshot when it is
    # created, and the identifier stays on every later deploy (CloudFormation replaces the instance with an empty one
    # when it is removed or changed: the release review blocks that).
    snapshot_identifier: text(
        r"^$|^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,253}[A-Za-z0-9]$|^[A-Za-z]$|" + RDS_SNAPSHOT_ARN.pattern,
        "not an RDS DB snapshot identifier or ARN",
        '"" (a new, empty database) or the DB snapshot to restore: its identifier (letters, digits, hyphens; a '
        "letter first) or, for a snapshot shared from another account, arn:aws:rds:<region>:<account>:snapshot:<name>",
        schema_pattern=False,
    ) = ""

    @model_validator(mode="after")
    def _storage_ceiling(self) -> DatabaseConfig:
        if self.max_allocated_storage_gb < self.allocated_storage_gb:
            report([Problem(("max_allocated_storage_gb",), self.max_allocated_storage_gb,
                            "smaller than allocated_storage_gb", f">= {self.allocated_storage_gb}")])
        return self


class RedisConfig(Section):
    node_type: text(CACHE_NODE_TYPE, "not an ElastiCache node type", "a node type such as cache.r6g.large")
    snapshot_retention_days: integer(1, 35, "an integer from 1 to 35 (days)")


class ImagesConfig(Section):
    """Container images, each pinned by an exact tag or a digest (never `latest`)."""

    coder: Image
    litellm: Image
    key_provisioner: _checked(
        StrictStr,
        "an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/name:tag) pinned by tag or digest",
        _ecr_image,
    )  # the image is built outside this project
    langfuse: Image
    langfuse_worker: Image
    clickhouse: Image


DesiredCount = integer(1, 100, "an integer from 1 to 100")


class ServicesConfig(Section):
    """Desired task counts per service."""

    coder_desired_count: _checked(
        StrictInt, "1", lambda v: None if v == 1 else "Coder runs single-replica"
    )  # several replicas need Coder's licensed high-availability feature
    litellm_desired_count: DesiredCount
    key_provisioner_desired_count: DesiredCount
    langfuse_web_desired_count: DesiredCount
    langfuse_worker_desired_count: DesiredCount


# A single tenant's v2.0 issuer (not `common` or `organizations`, which admit every tenant).
AZURE_AD_ISSUER = re.compile(r"^https://login\.microsoftonline\.(com|us)/(?P<tenant>" + GUID[1:-1] + r")/v2\.0/?$")


class OidcConfig(Section):
    """Azure AD (Entra ID) app registration used by Coder, by Langfuse and by the ALB in front of the admin UI.

    The client id is public (it appears in every login redirect); the client secret lives only in Secrets Manager.
    """

    client_id: text(GUID, "not an application (client) id", "a lower-case GUID, as Azure AD shows it")
    # Who may create a Coder account: users whose e-mail is in one of these domains (Coder checks the whole domain).
    allowed_email_domains: Annotated[
        tuple[Domain, ...],
        Field(min_length=1, description="the e-mail domains whose users may sign up to Coder, e.g. [\"company.com\"]"),
        AfterValidator(_unique),
    ]
    issuer_url: HttpsUrl
    authorization_endpoint: HttpsUrl
    token_endpoint: HttpsUrl
    user_info_endpoint: HttpsUrl
    @property
    def tenant_id(self) -> str:
        """The Azure AD tenant of `issuer_url` (Langfuse's sign-in names the tenant, not the issuer)."""
        match = AZURE_AD_ISSUER.match(self.issuer_url)
        assert match, "checked when loaded"
        return match.group("tenant")

    @model_validator(mode="after")
    def _one_azure_ad_tenant(self) -> OidcConfig:
        if not AZURE_AD_ISSUER.match(self.issuer_url):
            report([Problem(("issuer_url",), self.issuer_url,
                            "not the issuer of one Azure AD tenant (Langfuse's sign-in admits that tenant only)",
                            "https://login.microsoftonline.com/<tenant id>/v2.0")])
        return self

    # The version of `<prefix>/coder/oidc` the ALB uses ("": the current one when the rule last changed).
    client_secret_version: text(
        r"^$|" + GUID, "not a Secrets Manager version id", '"" or the VersionId that put-secret-value printed'
    ) = ""


class LangfuseConfig(Section):
    """Who owns Langfuse. People sign in with Azure AD (the [environments.oidc] app); password sign-in is off."""

    # Made an OWNER of the organisation LiteLLM traces into, at Langfuse's first start; they manage members and keys.
    owner_email: text(EMAIL.removeprefix("^$|"), "not an e-mail address",
                      "the e-mail (as Azure AD gives it) of the person who owns Langfuse's organisation")


BACKUP_VAULT_ARN = re.compile(r"^arn:aws[a-z-]*:backup:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):backup-vault:[A-Za-z0-9_.-]{2,50}$")


class BackupConfig(Section):
    """AWS Backup beyond the environment's own locked vault."""

    copy_vault_arn: text(
        r"^$|" + BACKUP_VAULT_ARN.pattern,
        "not a backup vault ARN",
        '"" (no copy) or arn:aws:backup:<other region>:<account>:backup-vault:<name>, a vault that accepts copies '
        "from this account",
    ) = ""


# Fargate's CPU units and the memory (MiB) each allows: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
FARGATE_MEMORY = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}


class TaskSize(Section):
    cpu: Annotated[StrictInt, Field(description="Fargate CPU units: 256, 512, 1024, 2048, 4096, 8192 or 16384")]
    memory_mib: Annotated[StrictInt, Field(description="memory in MiB that Fargate allows with this CPU")]

    @model_validator(mode="after")
    def _fargate_pair(self) -> TaskSize:
        if self.cpu not in FARGATE_MEMORY:
            report([Problem(("cpu",), self.cpu, "not a Fargate CPU size", ", ".join(map(str, FARGATE_MEMORY)))])
        elif self.memory_mib not in FARGATE_MEMORY[self.cpu]:
            allowed = FARGATE_MEMORY[self.cpu]
            report([Problem(("memory_mib",), self.memory_mib, f"Fargate does not run {self.cpu} CPU units with it",
                            f"{allowed[0]} to {allowed[-1]} in steps of {allowed[1] - allowed[0]}" if len(allowed) > 1
                            else str(allowed[0]))])
        return self


def _size(cpu: int, memory_mib: int) -> Any:
    return Field(default_factory=lambda: TaskSize(cpu=cpu, memory_mib=memory_mib))


class TasksConfig(Section):
    """CPU and memory of each service's task. Defaults are the seed plan's sizes."""

    coder: TaskSize = _size(1024, 4096)
    litellm: TaskSize = _size(512, 2048)
    key_provisioner: TaskSize = _size(256, 512)
    langfuse_web: TaskSize = _size(1024, 2048)
    langfuse_worker: TaskSize = _size(512, 1024)
    clickhouse: TaskSize = _size(1024, 4096)


def percent(default: int, what: str) -> Any:
    return Annotated[StrictInt, Field(ge=1, le=100, description=f"{what}: a percentage from 1 to 100")]


class AlarmsConfig(Section):
    """Who hears about trouble, and the thresholds of the environment's alarms (defaults a platform team would pick)."""

    email: text(EMAIL, "not an e-mail address", '"" (the [pipeline] notification_email) or an e-mail address') = ""
    alb_5xx_percent: percent(5, "the load balancer's own 5xx, per request") = 5
    target_5xx_percent: percent(5, "a service's 5xx, per request it gets") = 5
    response_time_p95_seconds: integer(1, 600, "p95 response time of the API services (not Coder), seconds") = 30
    ecs_cpu_percent: percent(85, "a service's CPU") = 85
    ecs_memory_percent: percent(85, "a service's memory") = 85
    rds_cpu_percent: percent(80, "the database's CPU") = 80
    rds_free_storage_percent: percent(10, "free storage left, of the storage autoscaling ceiling") = 10
    rds_freeable_memory_mib: integer(16, 1048576, "the database's freeable memory floor, MiB") = 256
    rds_connections: integer(1, 100000, "database connections") = 200
    redis_memory_percent: percent(80, "Redis memory used (noeviction: writes fail at 100 %)") = 80
    redis_cpu_percent: percent(80, "Redis engine CPU") = 80
    efs_io_limit_percent: percent(90, "the file system's I/O limit used") = 90


LAYERS = ("Network", "Data", "Platform", "Observability")


class AllowedChange(Section):
    """A release may replace or remove this stateful resource of this environment (python -m pipeline.changes)."""

    stack: Annotated[StrictStr, Field(description="the layer: Network, Data, Platform or Observability")]
    logical_id: text(r"^[A-Za-z0-9]{1,255}$", "not a CloudFormation logical id", "the resource's logical id in that stack")
    reason: Annotated[
        StrictStr, Field(min_length=MIN_ALLOWANCE_REASON, description=f"why losing it is intended ({MIN_ALLOWANCE_REASON}+ characters)")
    ]

    @model_validator(mode="after")
    def _known_layer(self) -> AllowedChange:
        if self.stack not in LAYERS:
            report([Problem(("stack",), self.stack, "not a layer of the platform", ", ".join(LAYERS))])
        return self


class AllowedDrift(AllowedChange):
    """A release may deploy over this resource although what runs differs from its deployed template (drift found by
    python -m pipeline.changes --drift): the difference is known and the deploy may overwrite it."""

    reason: Annotated[
        StrictStr,
        Field(min_length=MIN_ALLOWANCE_REASON,
              description=f"why deploying over the drift is intended ({MIN_ALLOWANCE_REASON}+ characters)"),
    ]


# CodePipeline's DeploymentWindow rule: six fields (seconds, always `*`; minutes; hours; day of month; month; day of
# week) and an optional year, separated by spaces.
CRON_FIELD = r"[0-9A-Za-z*?/,#L-]+"
WINDOW_CRON = rf"^\*( {CRON_FIELD}){{5,6}}$"


def _time_zone(value: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "not a time zone name of the IANA database"
    return None


def _window(value: str) -> str | None:
    if not value:
        return None
    if not re.match(WINDOW_CRON, value):
        return ("not a deployment-window cron expression: 6 or 7 fields separated by spaces, the first (seconds) `*`, "
                "e.g. \"* * 8-16 ? * MON-THU *\"")
    fields = value.split()
    if "?" not in (fields[3], fields[5]):
        return "day of month or day of week must be `?` (the other one says the days)"
    return None


class ReleaseGatesConfig(Section):
    """When a release may enter this environment and when it counts as done (the pipeline's stage gates)."""

    # After the smoke tests, the environment's alarms (`<project>-<env>-*`) are watched this long; one that goes into
    # ALARM fails the stage (production's stage then rolls back). 0: no bake.
    bake_minutes: integer(0, 180, "minutes of watching the alarms after the smoke tests: 0 (none) to 180") = 0
    # The stage is entered only at these times (CodePipeline's DeploymentWindow rule); otherwise the release stops
    # there. "" means always.
    deployment_window: _checked(
        StrictStr, '"" (always) or a cron expression of the times a release may enter, e.g. "* * 8-16 ? * MON-THU *"',
        _window,
    ) = ""
    time_zone: _checked(StrictStr, "an IANA time zone name (the deployment window's), e.g. Europe/Berlin", _time_zone) = "UTC"
    # How long the approval before this environment waits for a person (requires_approval); 0: CodePipeline's 7 days.
    approval_timeout_minutes: Annotated[
        StrictInt, Field(ge=0, le=86400, description="0 (CodePipeline's 7 days) or 5 to 86400 minutes")
    ] = 0

    @model_validator(mode="after")
    def _timeout_range(self) -> ReleaseGatesConfig:
        if 0 < self.approval_timeout_minutes < 5:
            report([Problem(("approval_timeout_minutes",), self.approval_timeout_minutes,
                            "shorter than CodePipeline's shortest approval timeout", "0, or 5 to 86400")])
        return self


class PlatformDataConfig(Section):
    """Platform data that earlier releases kept on the workspaces' file system, where an access point Coder creates
    can reach it. ClickHouse's data now lives on the platform's file system."""

    # "copy": ClickHouse copies it from the workspaces' file system once, before its first start, and the old copy
    # stays (a rollback to an earlier release finds it). "remove": the same, then the old copy is emptied (set it once
    # production runs on the new copy). "none": no old copy is read (a new environment, or once "remove" has run).
    old_clickhouse_data: text(
        r"^(copy|remove|none)$",
        "not copy, remove or none",
        '"copy" (keep the old copy), "remove" (empty it once copied) or "none" (nothing to move)',
    ) = "copy"


class FeaturesConfig(Section):
    enable_docker_workspaces: flag()
    enable_workspace_direct_access: flag()
    # None (not set): off in production, on elsewhere.
    enable_ecs_exec: Annotated[
        StrictBool | None,
        Field(description="shell access into running tasks (every session logged); default: off in production, on elsewhere"),
    ] = None


class EnvironmentConfig(Section):
    """One deployment environment: everything its Stage needs, and the rules its physical names follow."""

    name: text(
        ENVIRONMENT,
        "not a short lower-case name",
        "2 to 15 lower-case letters and digits, starting with a letter (e.g. dev, staging, production)",
    )
    requires_approval: flag("true (a person approves in the pipeline before this environment deploys) or false") = False
    account: Account
    region: Region
    domain: Domain
    hosted_zone_id: text(
        HOSTED_ZONE,
        "not a Route 53 hosted zone id",
        'a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ, or "" for no DNS validation',
    ) = ""
    custom_llm_api_base: _checked(
        StrictStr, '"" (no corporate gateway: no custom models, no gateway secret) or its https URL',
        lambda v: None if v == "" else _https_url(v),
    ) = ""
    tags: Annotated[
        dict[StrictStr, StrictStr],
        Field(description="a table of string tags (keys not starting with aws:)"),
        AfterValidator(_tags),
    ] = Field(default_factory=dict)
    network: NetworkConfig
    database: DatabaseConfig
    redis: RedisConfig
    images: ImagesConfig
    services: ServicesConfig
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    oidc: OidcConfig
    langfuse: LangfuseConfig
    features: FeaturesConfig
    backup: BackupConfig = Field(default_factory=BackupConfig)
    platform_data: PlatformDataConfig = Field(default_factory=PlatformDataConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    release: ReleaseGatesConfig = Field(default_factory=ReleaseGatesConfig)
    # Intended replacements or removals of stateful resources; anything else of the kind blocks the release.
    allowed_changes: Annotated[
        tuple[AllowedChange, ...],
        Field(description="[[environments.allowed_changes]]: stateful resources a release may replace, with a reason"),
    ] = ()
    # Known drift on a stateful resource or one the release changes; anything else of the kind blocks the release.
    allowed_drift: Annotated[
        tuple[AllowedDrift, ...],
        Field(description="[[environments.allowed_drift]]: drifted resources a release may deploy over, with a reason"),
    ] = ()

    _project: str = PrivateAttr(default="")  # set by AppConfig: the project every name starts with
    _pipeline_email: str = PrivateAttr(default="")  # set by AppConfig: the pipeline's notification e-mail

    @model_validator(mode="after")
    def _in_region(self) -> EnvironmentConfig:
        zone = re.compile(rf"^{re.escape(self.region)}[a-z]$")
        problems = [
            Problem(("network", "availability_zones", index), az, f"not an availability zone in {self.region}",
                    f"availability zone names of {self.region}, e.g. {self.region}a")
            for index, az in enumerate(self.network.availability_zones) if not zone.match(az)
        ]
        copy = BACKUP_VAULT_ARN.match(self.backup.copy_vault_arn)
        if copy and copy.group("region") == self.region:
            problems.append(Problem(("backup", "copy_vault_arn"), self.backup.copy_vault_arn,
                                    f"the copy would stay in {self.region}", "a vault in another region"))
        if self.release.approval_timeout_minutes and not self.requires_approval:
            problems.append(Problem(("release", "approval_timeout_minutes"), self.release.approval_timeout_minutes,
                                    "this environment has no approval (requires_approval = false)",
                                    "0, or requires_approval = true"))
        report(problems)
        return self

    def example_values(self) -> list[tuple[str, str]]:
        """(field, value) of each example value left in this environment: a placeholder account, an all-zero
        Azure AD tenant or client id, an example domain. Synth works with them; no deploy may (the pipeline's
        pre-step refuses the environment)."""
        found: list[tuple[str, str]] = []
        if EXAMPLE_ACCOUNT.match(self.account):
            found.append(("account", self.account))
        ecr = ECR_IMAGE.match(self.images.key_provisioner)
        if ecr and EXAMPLE_ACCOUNT.match(ecr.group("account")):
            found.append(("images.key_provisioner", self.images.key_provisioner))
        if _example_domain(self.domain):
            found.append(("domain", self.domain))
        gateway_host = urlsplit(self.custom_llm_api_base).hostname or ""
        if self.custom_llm_api_base and _example_domain(gateway_host):
            found.append(("custom_llm_api_base", self.custom_llm_api_base))
        found += [("oidc.allowed_email_domains", d) for d in self.oidc.allowed_email_domains if _example_domain(d)]
        if _example_domain(self.langfuse.owner_email.rpartition("@")[2]):
            found.append(("langfuse.owner_email", self.langfuse.owner_email))
        for field in ("client_id", "issuer_url", "authorization_endpoint", "token_endpoint"):
            value = getattr(self.oidc, field)
            if ZERO_GUID in value:
                found.append((f"oidc.{field}", value))
        return [(f"{self.name}.{field}", value) for field, value in found]

    # --- derived names: the one home of every per-environment physical name -------------------------------------

    @property
    def project(self) -> str:
        return self._project

    @property
    def has_gateway(self) -> bool:
        """A corporate LLM gateway is configured: LiteLLM gets its models and its API key secret."""
        return bool(self.custom_llm_api_base)

    @property
    def is_production(self) -> bool:
        return self.name == PRODUCTION

    @property
    def alarm_email(self) -> str | None:
        """Where this environment's alarms are e-mailed: its own address, else the pipeline's (filled in by AppConfig)."""
        return self.alarms.email or self._pipeline_email or None

    @property
    def ecs_exec(self) -> bool:
        """ECS Exec allowed: as configured, else off in production and on elsewhere."""
        configured = self.features.enable_ecs_exec
        return (not self.is_production) if configured is None else configured

    @property
    def stage_id(self) -> str:
        """The Stage's construct id, and so the stack name prefix: `Staging` -> `Staging-Network`."""
        return self.name.capitalize()

    @property
    def qualifier(self) -> str:
        """`{project}-{environment}`: the root of every per-environment physical name."""
        return f"{self.project}-{self.name}"

    @property
    def namespace_name(self) -> str:
        return f"{self.qualifier}.local"

    @property
    def ssm_prefix(self) -> str:
        return f"/{self.qualifier}/"

    @property
    def secret_prefix(self) -> str:
        return PRODUCTION_SECRET_PREFIX if self.is_production else self.name

    def secret_name(self, short_name: str) -> str:
        """`prod/litellm/master-key`, `staging/litellm/master-key`, ..."""
        return f"{self.secret_prefix}/{short_name}"

    def global_name(self, suffix: str) -> str:
        """A name unique across accounts and regions: qualifier, suffix, account, region."""
        return f"{self.qualifier}-{suffix}-{self.account}-{self.region}"

    def bucket_name(self, bucket: Bucket) -> str:
        return self.global_name(bucket.value)

    @property
    def workspace_cluster_name(self) -> str:
        """The ECS cluster Coder's workspaces run in (the platform services run in `qualifier`)."""
        return f"{self.qualifier}-workspaces"

    @property
    def lock_table_name(self) -> str:
        return f"{self.qualifier}-terraform-locks"

    @property
    def resource_tags(self) -> Mapping[str, str]:
        """Tags on every resource of the environment: the project's own, then the configured ones."""
        return MappingProxyType({"Project": self.project, "Environment": self.name, "ManagedBy": "cdk", **self.tags})


class AppConfig(Section):
    """The whole file: the project, the pipeline and the environments in promotion order."""

    project: ProjectConfig
    pipeline: PipelineConfig
    environments: Annotated[
        tuple[EnvironmentConfig, ...],
        Field(min_length=1, description="one [[environments]] table per environment, in promotion order"),
    ]

    @model_validator(mode="after")
    def _across_environments(self) -> AppConfig:
        for environment in self.environments:
            environment._project = self.project.name
            environment._pipeline_email = self.pipeline.notification_email
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for index, environment in enumerate(self.environments):
            where = ("environments", index)
            if environment.name in RESERVED_ENVIRONMENT_NAMES:
                problems.append(Problem((*where, "name"), environment.name, "reserved for the pipeline's own stages",
                                        f"a name other than {', '.join(RESERVED_ENVIRONMENT_NAMES)}"))
            if environment.name in seen:
                problems.append(Problem((*where, "name"), environment.name,
                                        f"environment {seen[environment.name] + 1} has the same name", "unique names"))
            seen.setdefault(environment.name, index)
            longest = environment.global_name(LONGEST_BUCKET_SUFFIX)
            if len(longest) > MAX_BUCKET_NAME:
                problems.append(Problem(("project", "name"), self.project.name,
                                        f"bucket name {longest!r} would exceed {MAX_BUCKET_NAME} characters",
                                        "a shorter project name"))
            for earlier in self.environments[:index]:
                problems += _pair_problems(earlier, environment, where)
        report(list(dict.fromkeys(problems)))
        return self

    def environment(self, name: str) -> EnvironmentConfig:
        """The environment called `name` (case-insensitive)."""
        for environment in self.environments:
            if environment.name == name.lower():
                return environment
        raise KeyError(f"no environment {name!r} (environments: {', '.join(e.name for e in self.environments)})")


def _pair_problems(earlier: EnvironmentConfig, later: EnvironmentConfig, where: tuple[str | int, ...]) -> list[Problem]:
    """What two environments may not share: a domain anywhere; in one account and region, a VPC range or a
    secret prefix (the other physical names carry the environment's name already)."""
    problems = []
    if later.domain == earlier.domain:
        problems.append(Problem((*where, "domain"), later.domain, f"the same domain as {earlier.name}", "a domain of its own"))
    if (later.account, later.region) == (earlier.account, earlier.region):
        if ipaddress.IPv4Network(later.network.vpc_cidr).overlaps(ipaddress.IPv4Network(earlier.network.vpc_cidr)):
            problems.append(Problem(
                (*where, "network", "vpc_cidr"), later.network.vpc_cidr,
                f"overlaps {earlier.name}'s VPC {earlier.network.vpc_cidr} in the same account and region",
                "a range of its own",
            ))
        if later.secret_prefix == earlier.secret_prefix:
            problems.append(Problem((*where, "name"), later.name,
                                    f"its secrets would be named {later.secret_prefix}/... like {earlier.name}'s",
                                    "another name"))
    return problems
