"""The platform's application services: each one's port, routes, health and smoke expectation, written once.

The security groups (Network layer), the service constructs, their listener rules and target groups, the URLs
services call each other by, and the smoke checks all read this module. Standard library only: the smoke CLI and the
probe Lambda import it too. Adding a service starts with a row here (README: "Add a service").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Placement(StrEnum):
    """The security group a service's tasks run in (Network layer)."""

    SERVICES = "services"  # the platform services group: Coder, LiteLLM, Key Provisioner
    LANGFUSE = "langfuse"  # Langfuse web and worker
    CLICKHOUSE = "clickhouse"  # reachable from Langfuse only


@dataclass(frozen=True)
class Route:
    """A host rule on the shared HTTPS listener: `<host>.<domain>` (`*` is every other subdomain)."""

    priority: int
    host: str
    sign_in: bool = False  # ALB authenticate-oidc before forwarding: browser UIs only, never API traffic

    def host_name(self, domain: str) -> str:
        return f"{self.host}.{domain}"


@dataclass(frozen=True)
class Smoke:
    """What "this service answers" means through the ALB, on the service's first route."""

    path: str
    sign_in_redirect: bool = False  # passes only on the redirect to the identity provider (a 2xx would mean no sign-in)


@dataclass(frozen=True)
class AppService:
    name: str  # container, Cloud Map and task family name (`<name>.<namespace>`)
    title: str  # for people: security-group rule descriptions, docs
    port: int
    health_path: str  # the target group's check when routed, else the container's own
    placement: Placement
    routes: tuple[Route, ...] = ()
    smoke: Smoke | None = None
    extra_ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # label -> port
    long_lived_connections: bool = False  # WebSockets held open for hours: no response-time alarm

    def url(self, namespace: str, scheme: str = "http") -> str:
        """How other services reach it inside the VPC, through Cloud Map."""
        return f"{scheme}://{self.name}.{namespace}:{self.port}"

    def local_url(self, path: str | None = None) -> str:
        """The container's own address (container health checks)."""
        return f"http://127.0.0.1:{self.port}{path if path is not None else self.health_path}"

    def smoke_check(self, domain: str, identity_provider_host: str) -> str | None:
        """`NAME=HOST/PATH[@redirect:IDP]`, the smoke CLI's check syntax; None for a service without a smoke check."""
        if self.smoke is None or not self.routes:
            return None
        host = self.routes[0].host_name(domain)
        redirect = f"@redirect:{identity_provider_host}" if self.smoke.sign_in_redirect else ""
        return f"{self.name}={host}{self.smoke.path}{redirect}"


CODER = AppService(
    name="coder",
    title="Coder",
    port=7080,
    health_path="/api/v2/buildinfo",
    placement=Placement.SERVICES,
    routes=(Route(100, "coder"), Route(500, "*")),  # workspace apps on subdomains
    smoke=Smoke("/api/v2/buildinfo"),
    long_lived_connections=True,  # agents and the web terminal hold WebSockets open
)
LITELLM = AppService(
    name="litellm",
    title="LiteLLM",
    port=4000,
    health_path="/health/readiness",  # never /health: it calls every model
    placement=Placement.SERVICES,
    routes=(Route(400, "ai"),),
    smoke=Smoke("/health/readiness"),
)
KEY_PROVISIONER = AppService(
    name="key-provisioner",
    title="Key Provisioner",
    port=8100,
    health_path="/health",
    placement=Placement.SERVICES,
    routes=(Route(200, "admin", sign_in=True),),
    # The admin UI sits behind ALB sign-in: the check proves rule, certificate and OIDC configuration; the Key
    # Provisioner's own health is proven by its target health.
    smoke=Smoke("/", sign_in_redirect=True),
)
LANGFUSE_WEB = AppService(
    name="langfuse-web",
    title="Langfuse web",
    port=3000,
    health_path="/api/public/health",
    placement=Placement.LANGFUSE,
    routes=(Route(300, "langfuse"),),
    smoke=Smoke("/api/public/health"),
)
# Langfuse web beyond its first task: same image and port, behind the same target group, never running migrations.
LANGFUSE_WEB_REPLICAS = AppService(
    name="langfuse-web-replicas",
    title="Langfuse web",
    port=LANGFUSE_WEB.port,
    health_path=LANGFUSE_WEB.health_path,
    placement=Placement.LANGFUSE,
)
LANGFUSE_WORKER = AppService(
    name="langfuse-worker", title="Langfuse worker", port=3030, health_path="/api/health", placement=Placement.LANGFUSE
)
CLICKHOUSE = AppService(
    name="clickhouse",
    title="ClickHouse",
    port=8123,
    health_path="/ping",
    placement=Placement.CLICKHOUSE,
    extra_ports=MappingProxyType({"native": 9000}),
)

SERVICES: tuple[AppService, ...] = (
    CODER, LITELLM, KEY_PROVISIONER, LANGFUSE_WEB, LANGFUSE_WEB_REPLICAS, LANGFUSE_WORKER, CLICKHOUSE
)


def routed() -> tuple[AppService, ...]:
    """The services behind the ALB, in catalogue order."""
    return tuple(service for service in SERVICES if service.routes)


def _check_catalogue() -> None:
    names = [s.name for s in SERVICES]
    priorities = [r.priority for s in SERVICES for r in s.routes]
    hosts = [r.host for s in SERVICES for r in s.routes]
    for label, values in (("name", names), ("rule priority", priorities), ("host", hosts)):
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"service catalogue: duplicate {label} {', '.join(duplicates)}")


_check_catalogue()
