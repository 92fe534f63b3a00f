"""The platform's one internal HTTPS load balancer, its certificate and its listener."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.compliance import acknowledge
from constructs_lib.stable_ids import Group
from constructs_lib.timeouts import ALB_IDLE_TIMEOUT_SECONDS

# Longer than LiteLLM's longest silent model call (constructs_lib/timeouts.py); Coder's WebSockets (DERP keepalive
# 60 s) outlive idle periods too.
IDLE_TIMEOUT = Duration.seconds(ALB_IDLE_TIMEOUT_SECONDS)
HTTPS_PORT = 443
DIRECT_ACCESS_PORT = 8443  # workspace direct access: Coder's own listener, no platform route on it


class InternalLoadBalancer(Group):
    """An internal ALB in `subnets` with an HTTPS listener for `domain` and `*.domain` (one ACM certificate).

    Defaults:
    - TLS 1.2+ policy; drops invalid header fields; HTTP/2; idle timeout 660 s (constructs_lib/timeouts.py); access logs to `access_logs`.
    - The listener answers 404 to any host no rule claims; services add their host rules to it.
    - The certificate is validated through `hosted_zone_id` when given, else by hand (records in the ACM console).
    - `open=False`: the security group alone says who may connect.
    - With `direct_access`, a second HTTPS listener on 8443 for workspace direct access: Coder adds its rules there,
      never on the listener that routes the platform's hosts.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        domain: str,
        hosted_zone_id: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        access_logs: s3.IBucket,
        deletion_protection: bool,
        direct_access: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        zone = (
            route53.HostedZone.from_hosted_zone_attributes(self, "HostedZone", hosted_zone_id=hosted_zone_id, zone_name=domain)
            if hosted_zone_id
            else None
        )
        self.certificate = acm.Certificate(
            self,
            "Certificate",
            domain_name=domain,
            subject_alternative_names=[f"*.{domain}"],
            validation=acm.CertificateValidation.from_dns(zone),
        )
        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            vpc_subnets=subnets,
            internet_facing=False,
            security_group=security_group,
            idle_timeout=IDLE_TIMEOUT,
            drop_invalid_header_fields=True,
            http2_enabled=True,
            deletion_protection=deletion_protection,
        )
        self.load_balancer.log_access_logs(access_logs, prefix="alb")
        reasons = {
            "ALBWAFEnabled": "Internal load balancer, reachable only from inside the VPC. AWS managed WAF rules would "
            "block legitimate traffic here (LLM request bodies above 8 KB, Coder's WebSockets); every service "
            "authenticates its callers (Coder sessions, LiteLLM keys, Langfuse keys, ALB sign-in for admin).",
        }
        if not deletion_protection:
            reasons["ELBDeletionProtectionEnabled"] = (
                f"{environment.capitalize()} is rebuilt at will; production's load balancer has deletion protection."
            )
        acknowledge(self.load_balancer, reasons)
        self.listener = self._https_listener("Https", HTTPS_PORT)
        self.direct_access_listener = self._https_listener("WorkspaceDirectAccess", DIRECT_ACCESS_PORT) if direct_access else None

    def _https_listener(self, construct_id: str, port: int) -> elbv2.ApplicationListener:
        return self.load_balancer.add_listener(
            construct_id,
            port=port,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_certificate_manager(self.certificate)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # the ALB security group admits its ports from the VPC only
            default_action=elbv2.ListenerAction.fixed_response(404, content_type="text/plain", message_body="Not found"),
        )
