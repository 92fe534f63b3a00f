"""Typed, frozen configuration model.

Every value a stack needs comes from here; stacks and constructs never read files, the environment or AWS.
Instances are built only by ``config.loader.load_config``, which validates every field first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class EnvironmentName(StrEnum):
    """The two deployment environments. The pipeline account is not one of them."""

    STAGING = "staging"
    PRODUCTION = "production"


# Secrets keep the seed's `prod/...` names for production; staging gets its own prefix so that both
# environments can share one account without a name clash.
SECRET_PREFIXES: Mapping[EnvironmentName, str] = MappingProxyType(
    {EnvironmentName.STAGING: "staging", EnvironmentName.PRODUCTION: "prod"}
)


@dataclass(frozen=True)
class PipelineConfig:
    """The tools account that hosts CodePipeline, and where its source comes from."""

    account: str
    region: str
    repository: str  # "owner/name" as the CodeConnections provider knows it
    branch: str
    connection_arn: str
    notification_email: str | None  # approvals and failures; None = topic without subscription


@dataclass(frozen=True)
class NetworkConfig:
    vpc_cidr: str
    availability_zones: tuple[str, ...]
    public_subnet_cidrs: tuple[str, ...]
    app_subnet_cidrs: tuple[str, ...]
    data_subnet_cidrs: tuple[str, ...]
    nat_gateways: int


@dataclass(frozen=True)
class DatabaseConfig:
    instance_class: str  # without the "db." prefix, e.g. "r6g.large"
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    backup_retention_days: int
    multi_az: bool
    deletion_protection: bool


@dataclass(frozen=True)
class RedisConfig:
    node_type: str  # e.g. "cache.r6g.large"
    snapshot_retention_days: int


@dataclass(frozen=True)
class ImagesConfig:
    """Container images, each pinned by an exact tag or a digest (never `latest`)."""

    coder: str
    litellm: str
    key_provisioner: str  # an ECR image URI: the image is built outside this project
    langfuse: str
    langfuse_worker: str
    clickhouse: str


@dataclass(frozen=True)
class ServicesConfig:
    """Desired task counts per service."""

    coder_desired_count: int
    litellm_desired_count: int
    key_provisioner_desired_count: int
    langfuse_web_desired_count: int
    langfuse_worker_desired_count: int


@dataclass(frozen=True)
class OidcConfig:
    """Azure AD (Entra ID) app registration used by Coder and by the ALB in front of the admin UI.

    The client id is public (it appears in every login redirect); the client secret lives only in Secrets Manager.
    """

    client_id: str
    issuer_url: str
    authorization_endpoint: str
    token_endpoint: str
    user_info_endpoint: str
    # The version of `<prefix>/coder/oidc` the ALB uses (None: the current one when the rule was last changed).
    client_secret_version: str | None = None


@dataclass(frozen=True)
class FeaturesConfig:
    enable_docker_workspaces: bool
    enable_workspace_direct_access: bool


@dataclass(frozen=True)
class EnvironmentConfig:
    """One deployment environment (staging or production): everything its Stage needs."""

    name: EnvironmentName
    project: str
    account: str
    region: str
    domain: str
    hosted_zone_id: str | None
    custom_llm_api_base: str
    network: NetworkConfig
    database: DatabaseConfig
    redis: RedisConfig
    images: ImagesConfig
    services: ServicesConfig
    oidc: OidcConfig
    features: FeaturesConfig
    tags: Mapping[str, str]

    @property
    def is_production(self) -> bool:
        return self.name is EnvironmentName.PRODUCTION

    @property
    def qualifier(self) -> str:
        """`{project}-{environment}`: the root of every per-environment physical name."""
        return f"{self.project}-{self.name.value}"

    @property
    def namespace_name(self) -> str:
        return f"{self.qualifier}.local"

    @property
    def ssm_prefix(self) -> str:
        return f"/{self.qualifier}/"

    @property
    def secret_prefix(self) -> str:
        return SECRET_PREFIXES[self.name]

    def global_name(self, suffix: str) -> str:
        """A name unique across accounts and regions (S3 buckets): qualifier, suffix, account, region."""
        return f"{self.qualifier}-{suffix}-{self.account}-{self.region}"


@dataclass(frozen=True)
class AppConfig:
    project: str
    pipeline: PipelineConfig
    staging: EnvironmentConfig
    production: EnvironmentConfig

    @property
    def environments(self) -> tuple[EnvironmentConfig, EnvironmentConfig]:
        """In promotion order."""
        return (self.staging, self.production)
