"""NetworkStack: VPC with three subnet tiers, VPC endpoints, the platform's security groups, Cloud Map."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from config.model import Bucket, EnvironmentConfig
from constructs_lib.alarms import Alarms, AlarmTopic
from constructs_lib.compliance import acknowledge
from constructs_lib.fixed_subnet_cidrs import FixedSubnetCidrs
from constructs_lib.internal_load_balancer import DIRECT_ACCESS_PORT
from constructs_lib.log_bucket import log_bucket
from constructs_lib.postgres_database import POSTGRES_PORT
from constructs_lib.python_lambda import logs_key
from constructs_lib.redis_cache import REDIS_PORT
from constructs_lib.service_catalogue import CLICKHOUSE, LITELLM, Placement, routed

S3_ACCESS_LOGS_PREFIX = "s3-access/"  # S3 server access logs of every platform bucket: s3-access/<bucket>/
FLOW_LOGS_PREFIX = "vpc-flow-logs/"

PUBLIC_SUBNETS = "Public"
APP_SUBNETS = "PrivateApp"
DATA_SUBNETS = "PrivateData"

WORKSPACE_AGENT_PORT = 13337
NFS_PORT = 2049

INTERFACE_ENDPOINTS = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "CloudWatchLogs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "BedrockRuntime": ec2.InterfaceVpcEndpointAwsService.BEDROCK_RUNTIME,
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,
    "Efs": ec2.InterfaceVpcEndpointAwsService.ELASTIC_FILESYSTEM,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
}


@dataclass(frozen=True)
class SecurityGroups:
    alb: ec2.ISecurityGroup
    ecs_services: ec2.ISecurityGroup
    ecs_workspaces: ec2.ISecurityGroup
    rds: ec2.ISecurityGroup
    redis: ec2.ISecurityGroup
    efs: ec2.ISecurityGroup  # the workspaces' file system
    platform_efs: ec2.ISecurityGroup  # the platform's file system: never reachable from workspaces
    db_bootstrap: ec2.ISecurityGroup  # the Lambda that creates app logins and databases
    langfuse: ec2.ISecurityGroup  # Langfuse web and worker
    clickhouse: ec2.ISecurityGroup  # reachable from Langfuse only
    smoke_probe: ec2.ISecurityGroup  # the smoke-test Lambda: HTTPS to the ALB, nothing else


@dataclass(frozen=True)
class NetworkStackOutputs:
    vpc: ec2.IVpc
    security_groups: SecurityGroups
    namespace: servicediscovery.IPrivateDnsNamespace
    public_subnets: ec2.SubnetSelection
    app_subnets: ec2.SubnetSelection
    data_subnets: ec2.SubnetSelection
    access_logs_bucket: s3.IBucket  # ALB, S3 server access and VPC flow logs (SSE-S3: what log delivery supports)
    logs_key: kms.IKey  # encrypts every CloudWatch Logs log group of the environment
    alarms: Alarms  # the environment's alarm topic and thresholds: every layer's alarms go there


class NetworkStack(Stack):
    """VPC (public / private-app / private-data over the configured AZs), one NAT gateway, S3 gateway and
    interface endpoints, the six platform security groups, the Cloud Map namespace `{project}-{env}.local` and the
    bucket that receives access logs.

    Non-obvious defaults:
    - Subnet CIDRs are exactly the configured ones (see ``FixedSubnetCidrs``).
    - Security groups have no default egress: each group may only send what the rules below allow, and a rule
      between two groups (``connections.allow_from``) writes the matching egress on the sender.
    - Interface endpoints share one security group that accepts 443 from the VPC range only.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        net = config.network
        self._configured_azs = list(net.availability_zones)

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=FixedSubnetCidrs(
                net.vpc_cidr,
                {
                    PUBLIC_SUBNETS: net.public_subnet_cidrs,
                    APP_SUBNETS: net.app_subnet_cidrs,
                    DATA_SUBNETS: net.data_subnet_cidrs,
                },
            ),
            availability_zones=list(net.availability_zones),
            nat_gateways=net.nat_gateways,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(name=PUBLIC_SUBNETS, subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24,
                                        map_public_ip_on_launch=False),
                ec2.SubnetConfiguration(name=APP_SUBNETS, subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=24),
                ec2.SubnetConfiguration(name=DATA_SUBNETS, subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.S3,
                    subnets=[
                        ec2.SubnetSelection(subnet_group_name=APP_SUBNETS),
                        ec2.SubnetSelection(subnet_group_name=DATA_SUBNETS),
                    ],
                )
            },
        )
        app_subnets = ec2.SubnetSelection(subnet_group_name=APP_SUBNETS)

        security_groups = self._security_groups(config)

        endpoints_sg = self._group("VpcEndpoints", "Interface VPC endpoints: HTTPS from inside the VPC")
        endpoints_sg.add_ingress_rule(ec2.Peer.ipv4(net.vpc_cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        self._keep_default_egress_closed([*vars(security_groups).values(), endpoints_sg])
        for endpoint_id, service in INTERFACE_ENDPOINTS.items():
            self.vpc.add_interface_endpoint(
                endpoint_id,
                service=service,
                subnets=app_subnets,
                private_dns_enabled=True,
                security_groups=[endpoints_sg],
                open=False,
            )

        self.namespace = servicediscovery.PrivateDnsNamespace(
            self,
            "Namespace",
            name=config.namespace_name,
            vpc=self.vpc,
            description=f"Service discovery for {config.qualifier}",
        )

        access_logs = self._access_logs_bucket(config)
        self.vpc.add_flow_log(
            "FlowLogs",
            destination=ec2.FlowLogDestination.to_s3(access_logs, FLOW_LOGS_PREFIX),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        acknowledge(
            self.vpc,
            {
                "VPCNoUnrestrictedRouteToIGW": "Only the public subnets route to the internet gateway, for the NAT "
                "gateway; they run no workload and assign no public IPs. Every service runs in private subnets.",
            },
        )
        logs_key = self._logs_key(config)
        # First layer: every later layer sends its alarms here.
        alarm_topic = AlarmTopic(self, "Alarms", qualifier=config.qualifier, email=config.alarm_email)

        self.outputs = NetworkStackOutputs(
            vpc=self.vpc,
            security_groups=security_groups,
            namespace=self.namespace,
            public_subnets=ec2.SubnetSelection(subnet_group_name=PUBLIC_SUBNETS),
            app_subnets=app_subnets,
            data_subnets=ec2.SubnetSelection(subnet_group_name=DATA_SUBNETS),
            access_logs_bucket=access_logs,
            logs_key=logs_key,
            alarms=Alarms(alarm_topic.topic, config.alarms, config.qualifier),
        )

    def _access_logs_bucket(self, config: EnvironmentConfig) -> s3.IBucket:
        # Also the target of the Data layer's S3 server access logs (they name this bucket in their logging).
        return log_bucket(
            self, "AccessLogsBucket", bucket_name=config.bucket_name(Bucket.ACCESS_LOGS), s3_access_prefix=S3_ACCESS_LOGS_PREFIX
        )

    def _logs_key(self, config: EnvironmentConfig) -> kms.Key:
        return logs_key(self, "LogsKey", alias=f"alias/{config.qualifier}-logs",
                        description=f"Encrypts {config.qualifier} CloudWatch Logs log groups")

    @property
    def availability_zones(self) -> list[str]:
        """The configured AZs. Without this override, CDK would look the AZs up in the account (no offline synth)."""
        return self._configured_azs

    def _group(self, construct_id: str, description: str) -> ec2.SecurityGroup:
        return ec2.SecurityGroup(
            self, construct_id, vpc=self.vpc, description=description, allow_all_outbound=False
        )

    def _security_groups(self, config: EnvironmentConfig) -> SecurityGroups:
        alb = self._group("AlbSecurityGroup", "Internal ALB: HTTPS from the VPC")
        services = self._group("EcsServicesSecurityGroup", "ECS platform services (Coder, LiteLLM, Langfuse, ...)")
        workspaces = self._group("EcsWorkspacesSecurityGroup", "Coder workspaces")
        rds = self._group("RdsSecurityGroup", "RDS PostgreSQL")
        redis = self._group("RedisSecurityGroup", "ElastiCache Redis")
        efs = self._group("EfsSecurityGroup", "EFS mount targets")  # the workspaces' file system (description kept)
        platform_efs = self._group("PlatformEfsSecurityGroup", "Platform EFS mount targets: Coder and ClickHouse only")
        db_bootstrap = self._group("DbBootstrapSecurityGroup", "Database bootstrap Lambda: PostgreSQL and Secrets Manager")
        langfuse = self._group("LangfuseSecurityGroup", "Langfuse web and worker")
        clickhouse = self._group("ClickHouseSecurityGroup", "ClickHouse (Langfuse trace store), reachable from Langfuse only")
        smoke_probe = self._group("SmokeProbeSecurityGroup", "Smoke-test probe Lambda: HTTPS to the internal ALB only")
        anywhere = ec2.Peer.any_ipv4()

        alb.add_ingress_rule(ec2.Peer.ipv4(config.network.vpc_cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        if config.features.enable_workspace_direct_access:
            alb.add_ingress_rule(ec2.Peer.ipv4(config.network.vpc_cidr), ec2.Port.tcp(DIRECT_ACCESS_PORT),
                                 "Workspace direct access (HTTPS) from the VPC")
        # ALB authenticate-oidc calls the identity provider's token and user-info endpoints.
        alb.add_egress_rule(anywhere, ec2.Port.tcp(443), "OIDC identity provider (ALB authenticate-oidc)")
        alb.connections.allow_from(smoke_probe, ec2.Port.tcp(443), "HTTPS from the smoke-test probe")
        # The ALB reaches each routed service (service catalogue) on its port, in the group it runs in.
        placed = {Placement.SERVICES: services, Placement.LANGFUSE: langfuse, Placement.CLICKHOUSE: clickhouse}
        for service in routed():
            placed[service.placement].connections.allow_from(alb, ec2.Port.tcp(service.port), f"{service.title} from the ALB")
        services.add_egress_rule(anywhere, ec2.Port.tcp(443), "HTTPS: AWS APIs, identity provider, LLM APIs")

        workspaces.connections.allow_from(alb, ec2.Port.tcp(WORKSPACE_AGENT_PORT), "Workspace apps from the ALB")
        workspaces.connections.allow_to(services, ec2.Port.tcp(LITELLM.port), "LiteLLM from workspaces")
        workspaces.add_egress_rule(anywhere, ec2.Port.tcp(443), "HTTPS")
        workspaces.add_egress_rule(anywhere, ec2.Port.tcp(53), "DNS over TCP")
        workspaces.add_egress_rule(anywhere, ec2.Port.udp(53), "DNS")

        langfuse.add_egress_rule(anywhere, ec2.Port.tcp(443), "HTTPS: S3, AWS APIs, image registry")
        clickhouse_ports = {"HTTP": CLICKHOUSE.port, **CLICKHOUSE.extra_ports}
        for label, port in clickhouse_ports.items():
            clickhouse.connections.allow_from(langfuse, ec2.Port.tcp(port), f"{CLICKHOUSE.title} {label} from Langfuse")
        clickhouse.add_egress_rule(anywhere, ec2.Port.tcp(443), "HTTPS: image registry, CloudWatch Logs")
        platform_efs.connections.allow_from(clickhouse, ec2.Port.tcp(NFS_PORT), "NFS from ClickHouse (its data directory)")
        # ClickHouse's data directory on the workspaces' file system, where earlier releases kept it (copied once).
        efs.connections.allow_from(clickhouse, ec2.Port.tcp(NFS_PORT), "NFS from ClickHouse (moving its old data)")

        rds.connections.allow_from(services, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL from ECS services")
        rds.connections.allow_from(langfuse, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL from Langfuse")
        redis.connections.allow_from(langfuse, ec2.Port.tcp(REDIS_PORT), "Redis from Langfuse (queues)")
        rds.connections.allow_from(db_bootstrap, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL from the database bootstrap")
        db_bootstrap.add_egress_rule(
            ec2.Peer.ipv4(config.network.vpc_cidr), ec2.Port.tcp(443), "Secrets Manager through its VPC endpoint"
        )
        redis.connections.allow_from(services, ec2.Port.tcp(REDIS_PORT), "Redis from ECS services")
        platform_efs.connections.allow_from(services, ec2.Port.tcp(NFS_PORT), "NFS from ECS services (Coder's configuration)")
        efs.connections.allow_from(workspaces, ec2.Port.tcp(NFS_PORT), "NFS from workspaces")

        return SecurityGroups(
            alb=alb, ecs_services=services, ecs_workspaces=workspaces, rds=rds, redis=redis, efs=efs, platform_efs=platform_efs,
            db_bootstrap=db_bootstrap, langfuse=langfuse, clickhouse=clickhouse, smoke_probe=smoke_probe,
        )

    def _keep_default_egress_closed(self, groups: list[ec2.SecurityGroup]) -> None:
        """CloudFormation gives a group without inline egress rules its default allow-all rule, and rules that are
        resources of their own (CDK writes every rule to another group that way) do not remove it. CDK drops its
        matches-nothing placeholder as soon as a group has any rule, so a group whose egress is only to other groups
        (the smoke probe: 443 to the ALB) would send anywhere. Such a group gets CDK's placeholder back, inline
        (ICMP type 252 code 86 to a broadcast address matches no packet)."""
        for group in groups:
            cfn: ec2.CfnSecurityGroup = group.node.default_child  # type: ignore[assignment]
            if not self.resolve(cfn.security_group_egress):
                group.add_egress_rule(ec2.Peer.ipv4("255.255.255.255/32"), ec2.Port.icmp_type_and_code(252, 86),
                                      "Disallow all traffic (keeps CloudFormation's default allow-all rule away)")
