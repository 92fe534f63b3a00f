"""The one Fargate service pattern every platform application is built on."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aws_cdk import Duration, SecretValue, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from config.model import ECR_IMAGE
from constructs_lib.alarms import FIVE_MINUTES, ONE_MINUTE, Alarms
from constructs_lib.compliance import acknowledge
from constructs_lib.python_lambda import encrypted_log_group
from constructs_lib.service_catalogue import AppService

# Names that carry credentials must come from Secrets Manager (`secrets=`), never from `environment=`.
SECRET_LIKE_NAME = re.compile(
    r"PASSWORD|SECRET|TOKEN|API_KEY|MASTER_KEY|PUBLIC_KEY|SALT|ENCRYPTION_KEY|DATABASE_URL|CONNECTION_URL|_AUTH$"
)
# Switches whose names contain such a word: they carry `true`/`false`, never a credential.
SWITCHES = frozenset({"AUTH_DISABLE_USERNAME_PASSWORD"})
ECS_TASKS = "ecs-tasks.amazonaws.com"
# The move container's script, as it is in the file (tests/test_move_data.py runs that file).
MOVE_SCRIPT = (Path(__file__).parent / "scripts" / "move-data.sh").read_text()


def task_role(scope: Construct, construct_id: str, description: str) -> iam.Role:
    """A task role (what a task's code may do), assumed by ECS tasks of this account and region only: ECS's documented
    confused-deputy conditions (aws:SourceAccount, aws:SourceArn of this account's ECS resources)."""
    stack = Stack.of(scope)
    return iam.Role(
        scope,
        construct_id,
        assumed_by=iam.ServicePrincipal(ECS_TASKS, conditions={
            "StringEquals": {"aws:SourceAccount": stack.account},
            "ArnLike": {"aws:SourceArn": f"arn:{stack.partition}:ecs:{stack.region}:{stack.account}:*"},
        }),
        description=description,
    )


def http_health_check(url: str, start_period: Duration) -> ecs.HealthCheck:
    """A container health check that fetches `url` with wget (present in the ClickHouse and Langfuse images)."""
    return ecs.HealthCheck(
        command=["CMD-SHELL", f"wget --quiet --tries=1 --spider {url} || exit 1"],
        interval=Duration.seconds(30),
        timeout=Duration.seconds(5),
        retries=3,
        start_period=start_period,
    )


@dataclass(frozen=True)
class ServiceRuntime:
    """What every service of one environment shares (cluster, network placement, execution role, discovery)."""

    cluster: ecs.ICluster
    vpc: ec2.IVpc
    subnets: ec2.SubnetSelection
    security_group: ec2.ISecurityGroup
    namespace: servicediscovery.INamespace
    family_prefix: str  # `{project}-{env}`: task definition families are `<prefix>-<service>`
    logs_key: kms.IKey  # encrypts the services' log groups
    secrets_key: kms.IKey  # encrypts the secrets the containers receive
    ecs_exec_log_group: str | None  # where the cluster logs ECS Exec sessions; None: no ECS Exec in this environment
    alarms: Alarms  # the environment's alarm topic and thresholds


@dataclass(frozen=True)
class OidcAuthentication:
    """ALB `authenticate-oidc` in front of a route (browser sign-in; never for API traffic)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    user_info_endpoint: str
    client_id: str
    client_secret: SecretValue  # a Secrets Manager dynamic reference, resolved by CloudFormation


@dataclass(frozen=True)
class MovedData:
    """Where an earlier release kept a mount's data: copied into the mount once, before the service starts
    (scripts/move-data.sh), then, with `remove_source`, removed from there."""

    file_system: efs.IFileSystem
    access_point: efs.IAccessPoint
    remove_source: bool = False


@dataclass(frozen=True)
class EfsMount:
    """An EFS directory mounted through an access point, TLS in transit and IAM authorization."""

    file_system: efs.IFileSystem
    access_point: efs.IAccessPoint
    container_path: str
    moved_from: MovedData | None = None


@dataclass(frozen=True)
class Listener:
    """The shared listener a routed service adds its catalogue routes to, on `<host>.<domain>`."""

    listener: elbv2.IApplicationListener
    domain: str
    sign_in: OidcAuthentication | None = None  # required by routes with sign_in


@dataclass(frozen=True)
class ServiceSpec:
    service: AppService  # name (container, Cloud Map, log stream prefix), ports, routes and health path
    image: str
    cpu: int
    memory_mib: int
    desired_count: int
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, ecs.Secret] = field(default_factory=dict)
    command: Sequence[str] | None = None
    entry_point: Sequence[str] | None = None  # None: the image's own
    stateless: bool = True  # False: never on Spot (Coder, ClickHouse)
    use_spot: bool = False  # only honoured for stateless services with >= 2 tasks
    min_healthy_percent: int = 100
    max_healthy_percent: int = 200
    health_check_grace: Duration = Duration.seconds(120)
    container_health_check: ecs.HealthCheck | None = None
    efs_mounts: tuple[EfsMount, ...] = ()
    ulimit_nofile: int | None = None

    @property
    def name(self) -> str:
        return self.service.name


class FargateService(Construct):
    """Task definition with an execution role of its own, log group, container with Secrets Manager secrets, Fargate
    service with Cloud Map name, circuit breaker (rollback), ECS Exec where the environment allows it, and, when it
    has routes, a target group with its health check and the host-based listener rules.

    Defaults:
    - Logs go to a log group kept one year, encrypted with the logs key (RETAIN: nothing lost on replacement).
    - Capacity: regular Fargate; Fargate Spot is mixed in (one regular task kept as base) only for a stateless
      service asking for it with at least two tasks.
    - Environment values are plain configuration: a name that looks like a credential is refused there.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: ServiceRuntime,
        spec: ServiceSpec,
        task_role: iam.IRole,
        listener: Listener | None = None,
        target_group: elbv2.IApplicationTargetGroup | None = None,
        target_group_alarms: Sequence[str] = (),
    ) -> None:
        """`listener`: the service's catalogue routes go there, to a target group of its own. `target_group`: the
        service joins another service's target group instead (more tasks behind the same routes), and rolls back on
        that group's alarms (`target_group_alarms`)."""
        super().__init__(scope, construct_id)
        _validate(spec, listener)
        if listener is not None and target_group is not None:
            raise ValueError(f"service {spec.name}: a listener or another service's target group, not both")
        self.spec = spec

        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "TaskDefinition",
            family=f"{runtime.family_prefix}-{spec.name}",
            cpu=spec.cpu,
            memory_limit_mib=spec.memory_mib,
            task_role=task_role,  # the execution role is the task definition's own (CDK makes it, grants below)
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
        )
        self.log_group = encrypted_log_group(self, "Logs", runtime.logs_key)
        image = _image(self, spec.image)
        self.container = self.task_definition.add_container(
            spec.name,
            image=image,
            port_mappings=[
                ecs.PortMapping(container_port=port, name=f"{spec.name}-{port}" if port != spec.service.port else spec.name)
                for port in (spec.service.port, *spec.service.extra_ports.values())
            ],
            ulimits=(
                [ecs.Ulimit(name=ecs.UlimitName.NOFILE, soft_limit=spec.ulimit_nofile, hard_limit=spec.ulimit_nofile)]
                if spec.ulimit_nofile
                else None
            ),
            environment=dict(spec.environment),
            secrets=dict(spec.secrets),
            command=list(spec.command) if spec.command else None,
            entry_point=list(spec.entry_point) if spec.entry_point else None,
            logging=ecs.LogDriver.aws_logs(stream_prefix=spec.name, log_group=self.log_group),
            health_check=spec.container_health_check,
            essential=True,
        )
        acknowledge(
            self.task_definition,
            {
                "AwsSolutions-ECS2": "The environment holds plain configuration only (host names, ports, flags); "
                "credentials come from Secrets Manager, and names that look like credentials are refused here.",
            },
        )
        self.execution_role = self.task_definition.obtain_execution_role()
        if spec.secrets:
            # CDK grants GetSecretValue on exactly the secrets of `spec.secrets`; they are encrypted with our key.
            self.execution_role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="DecryptSecretsViaSecretsManager",
                    actions=["kms:Decrypt"],
                    resources=[runtime.secrets_key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{Stack.of(self).region}.amazonaws.com"}},
                )
            )
        if ECR_IMAGE.match(spec.image):
            acknowledge(
                self.execution_role,
                {
                    "AwsSolutions-IAM5[Resource::*]": "ecr:GetAuthorizationToken (the registry login) has no resource; "
                    "image pulls themselves are limited to this service's repository.",
                },
            )
        for index, mount in enumerate(spec.efs_mounts):
            volume = self._efs_volume(f"{spec.name}-efs-{index}", mount.file_system, mount.access_point, task_role)
            self.container.add_mount_points(
                ecs.MountPoint(source_volume=volume, container_path=mount.container_path, read_only=False)
            )
            if mount.moved_from is not None:
                self._move_data(f"{spec.name}-move-{index}", image, volume, mount.moved_from, task_role)

        spot = spec.stateless and spec.use_spot
        # A deployment behind the ALB rolls back when its target group's 5xx or unhealthy-host alarm fires.
        self.deployment_alarm_names: tuple[str, ...] = (
            (f"{runtime.alarms.prefix}-{spec.name}-5xx", f"{runtime.alarms.prefix}-{spec.name}-unhealthy-hosts")
            if listener is not None else tuple(target_group_alarms)
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=runtime.cluster,
            task_definition=self.task_definition,
            desired_count=spec.desired_count,
            security_groups=[runtime.security_group],
            vpc_subnets=runtime.subnets,
            assign_public_ip=False,
            enable_execute_command=runtime.ecs_exec_log_group is not None,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            deployment_alarms=ecs.DeploymentAlarmConfig(
                alarm_names=list(self.deployment_alarm_names), behavior=ecs.AlarmBehavior.ROLLBACK_ON_ALARM
            ) if self.deployment_alarm_names else None,
            min_healthy_percent=spec.min_healthy_percent,
            max_healthy_percent=spec.max_healthy_percent,
            health_check_grace_period=spec.health_check_grace if listener or target_group else None,
            capacity_provider_strategies=(
                [
                    ecs.CapacityProviderStrategy(capacity_provider="FARGATE", base=1, weight=1),
                    ecs.CapacityProviderStrategy(capacity_provider="FARGATE_SPOT", weight=1),
                ]
                if spot
                else [ecs.CapacityProviderStrategy(capacity_provider="FARGATE", weight=1)]
            ),
            cloud_map_options=ecs.CloudMapOptions(
                name=spec.name,
                cloud_map_namespace=runtime.namespace,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
            ),
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            enable_ecs_managed_tags=True,
        )

        # ECS Exec: CDK grants the ssmmessages channel actions (no resource-level permissions) and the session log
        # group's streams.
        exec_policy = task_role.node.try_find_child("DefaultPolicy") if isinstance(task_role, iam.Role) else None
        if runtime.ecs_exec_log_group is not None and exec_policy is not None:
            stack = Stack.of(self)
            session_streams = (
                f"arn:{stack.resolve(stack.partition)}:logs:{stack.region}:{stack.account}:log-group:"
                f"{runtime.ecs_exec_log_group}:*"
            )
            acknowledge(
                exec_policy,
                {
                    "AwsSolutions-IAM5[Resource::*]": "ECS Exec's ssmmessages channel actions and logs:DescribeLogGroups "
                    "support no resource-level permissions; sessions still need ecs:ExecuteCommand on this cluster, "
                    "which no task role has.",
                    f"AwsSolutions-IAM5[Resource::{session_streams}]": "The log streams of the cluster's ECS Exec session "
                    "log group, which ECS names per session.",
                },
            )
        self.target_group: elbv2.IApplicationTargetGroup | None = target_group
        self.rules: list[elbv2.ApplicationListenerRule] = []
        # The load balancer's own name attribute: CDK's target-group metrics split it out of the listener's ARN, an
        # expression CloudFormation linters refuse once the listener lives in another stack.
        self._load_balancer_name = listener.listener.load_balancer.load_balancer_full_name if listener else None
        if target_group is not None:
            self.service.attach_to_application_target_group(target_group)
        if listener is not None:
            self.target_group = elbv2.ApplicationTargetGroup(
                self,
                "TargetGroup",
                vpc=runtime.vpc,
                port=spec.service.port,
                protocol=elbv2.ApplicationProtocol.HTTP,
                target_type=elbv2.TargetType.IP,
                deregistration_delay=Duration.seconds(30),
                health_check=elbv2.HealthCheck(
                    path=spec.service.health_path,
                    healthy_http_codes="200",
                    interval=Duration.seconds(30),
                    timeout=Duration.seconds(10),
                    healthy_threshold_count=2,
                    unhealthy_threshold_count=3,
                ),
            )
            self.service.attach_to_application_target_group(self.target_group)
            for route in spec.service.routes:
                self.rules.append(
                    elbv2.ApplicationListenerRule(
                        self,
                        f"Rule{route.priority}",
                        listener=listener.listener,
                        priority=route.priority,
                        conditions=[elbv2.ListenerCondition.host_headers([route.host_name(listener.domain)])],
                        action=_action(listener.sign_in if route.sign_in else None, self.target_group),
                    )
                )
        self.alarms = self._alarms(runtime.cluster, runtime.alarms, spec.service)

    def _efs_volume(
        self, name: str, file_system: efs.IFileSystem, access_point: efs.IAccessPoint, task_role: iam.IRole,
        write: bool = True,
    ) -> str:
        """A task volume on `access_point` (TLS, IAM authorization), and the task role's grant for exactly it."""
        self.task_definition.add_volume(
            name=name,
            efs_volume_configuration=ecs.EfsVolumeConfiguration(
                file_system_id=file_system.file_system_id,
                transit_encryption="ENABLED",
                authorization_config=ecs.AuthorizationConfig(access_point_id=access_point.access_point_id, iam="ENABLED"),
            ),
        )
        task_role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["elasticfilesystem:ClientMount", *(["elasticfilesystem:ClientWrite"] if write else [])],
                resources=[file_system.file_system_arn],
                conditions={"StringEquals": {"elasticfilesystem:AccessPointArn": access_point.access_point_arn}},
            )
        )
        return name

    def _move_data(
        self, name: str, image: ecs.ContainerImage, volume: str, moved: MovedData, task_role: iam.IRole
    ) -> None:
        """A container that runs before the service's (which waits for it to succeed) and moves the mount's data
        from where an earlier release kept it (scripts/move-data.sh): the same image, so nothing more is pulled."""
        old = self._efs_volume(f"{name}-source", moved.file_system, moved.access_point, task_role,
                               write=moved.remove_source)
        move = self.task_definition.add_container(
            name,
            image=image,
            essential=False,
            entry_point=["sh", "-c"],
            command=[MOVE_SCRIPT],
            environment={"MOVE_FROM": "/moving/from", "MOVE_TO": "/moving/to",
                         "MOVE_REMOVE_SOURCE": str(moved.remove_source).lower()},
            logging=ecs.LogDriver.aws_logs(stream_prefix=name, log_group=self.log_group),
        )
        move.add_mount_points(
            ecs.MountPoint(source_volume=old, container_path="/moving/from", read_only=not moved.remove_source),
            ecs.MountPoint(source_volume=volume, container_path="/moving/to", read_only=False),
        )
        self.container.add_container_dependencies(
            ecs.ContainerDependency(container=move, condition=ecs.ContainerDependencyCondition.SUCCESS)
        )

    def target_metric(self, metric: str, statistic: str, period: Duration, label: str | None = None) -> cloudwatch.Metric:
        """A metric of this service's own target group (AWS/ApplicationELB), e.g. UnHealthyHostCount."""
        if self.target_group is None or self._load_balancer_name is None:
            raise TypeError(f"{self.node.path}: target-group metrics exist only for a service behind the load balancer")
        return cloudwatch.Metric(
            namespace="AWS/ApplicationELB", metric_name=metric, statistic=statistic, period=period, label=label,
            dimensions_map={"LoadBalancer": self._load_balancer_name, "TargetGroup": self.target_group.target_group_full_name},
        )

    @property
    def routed(self) -> bool:
        return self._load_balancer_name is not None

    def _alarms(self, cluster: ecs.ICluster, alarms: Alarms, service: AppService) -> list[cloudwatch.Alarm]:
        """Tasks below desired, CPU and memory; behind the ALB also 5xx rate, unhealthy hosts (the deployment alarms)
        and, for API services, p95 response time."""
        limits, title, name = alarms.thresholds, service.title, service.name

        def insights(metric: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="ECS/ContainerInsights", metric_name=metric, statistic="Average", period=FIVE_MINUTES,
                dimensions_map={"ClusterName": cluster.cluster_name, "ServiceName": self.service.service_name},
            )

        made = [
            alarms.alarm(
                self, "TasksBelowDesiredAlarm", name=f"{name}-tasks-below-desired", threshold=0,
                metric=cloudwatch.MathExpression(expression="desired - running", period=FIVE_MINUTES, label="missing tasks",
                                                 using_metrics={"desired": insights("DesiredTaskCount"),
                                                                "running": insights("RunningTaskCount")}),
                description=f"{title}: fewer tasks running than desired for 15 minutes. Look first at the service's "
                "events in the ECS console (why tasks stopped), then at its log group.",
            ),
            alarms.alarm(
                self, "CpuAlarm", name=f"{name}-cpu", threshold=limits.ecs_cpu_percent,
                metric=self.service.metric_cpu_utilization(period=FIVE_MINUTES),
                description=f"{title}: CPU above {limits.ecs_cpu_percent} % for 15 minutes. Look first at its request "
                "rate on the dashboard; then raise the task size ([environments.tasks]) or the desired count.",
            ),
            alarms.alarm(
                self, "MemoryAlarm", name=f"{name}-memory", threshold=limits.ecs_memory_percent,
                metric=self.service.metric_memory_utilization(period=FIVE_MINUTES),
                description=f"{title}: memory above {limits.ecs_memory_percent} % for 15 minutes: tasks are close to "
                "being killed for memory. Look first at the dashboard's memory graph, then raise the task's memory.",
            ),
        ]
        if not self.routed:
            return made
        five_xx = cloudwatch.MathExpression(
            expression="100 * errors / requests", period=ONE_MINUTE, label="5xx %",
            using_metrics={
                "errors": self.target_metric("HTTPCode_Target_5XX_Count", "Sum", ONE_MINUTE),
                "requests": self.target_metric("RequestCount", "Sum", ONE_MINUTE),
            },
        )
        deployment = [
            alarms.alarm(
                self, "ErrorRateAlarm", name=f"{name}-5xx", metric=five_xx, threshold=limits.target_5xx_percent, datapoints=2,
                description=f"{title}: more than {limits.target_5xx_percent} % of its requests answered 5xx (2 of 3 "
                "minutes). A deployment running now rolls back. Look first at the service's log group for errors.",
            ),
            alarms.alarm(
                self, "UnhealthyHostsAlarm", name=f"{name}-unhealthy-hosts", threshold=0, periods=2,
                metric=self.target_metric("UnHealthyHostCount", "Maximum", ONE_MINUTE),
                description=f"{title}: a target fails the ALB's health check ({service.health_path}) for 2 minutes. "
                "A deployment running now rolls back. Look first at the target group's health in the EC2 console.",
            ),
        ]
        for alarm in deployment:
            self.service.node.add_dependency(alarm)  # ECS names them in the service: they must exist first
        made += deployment
        if not service.long_lived_connections:
            made.append(alarms.alarm(
                self, "LatencyAlarm", name=f"{name}-p95-response-time", threshold=limits.response_time_p95_seconds,
                metric=self.target_metric("TargetResponseTime", "p95", FIVE_MINUTES),
                description=f"{title}: p95 response time above {limits.response_time_p95_seconds} s for 15 minutes. "
                "Look first at its CPU and at what it waits on (LLM providers for LiteLLM, ClickHouse for Langfuse).",
            ))
        return made



def ecr_repository_arn(image: str, partition: str) -> str | None:
    """The ARN of an ECR image's repository; None for an image of another registry."""
    match = ECR_IMAGE.match(image)
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repository']}" if match else None


def _image(scope: Construct, image: str) -> ecs.ContainerImage:
    """ECR images through their repository (the execution role gets pull rights on it); others from their registry."""
    match = ECR_IMAGE.match(image)
    if not match:
        return ecs.ContainerImage.from_registry(image)
    repository = ecr.Repository.from_repository_attributes(
        scope,
        "Repository",
        repository_name=match["repository"],
        repository_arn=ecr_repository_arn(image, Stack.of(scope).partition),
    )
    return ecs.ContainerImage.from_ecr_repository(repository, match["tag"] or match["digest"])


def _action(auth: OidcAuthentication | None, target_group: elbv2.IApplicationTargetGroup) -> elbv2.ListenerAction:
    forward = elbv2.ListenerAction.forward([target_group])
    if auth is None:
        return forward
    return elbv2.ListenerAction.authenticate_oidc(
        issuer=auth.issuer,
        authorization_endpoint=auth.authorization_endpoint,
        token_endpoint=auth.token_endpoint,
        user_info_endpoint=auth.user_info_endpoint,
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        scope="openid profile email",
        session_timeout=Duration.hours(8),
        on_unauthenticated_request=elbv2.UnauthenticatedAction.AUTHENTICATE,
        next=forward,
    )


def _validate(spec: ServiceSpec, listener: Listener | None) -> None:
    problems = []
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", spec.name):
        problems.append(f"name {spec.name!r} must be a lower-case DNS label")
    leaked = sorted(name for name in spec.environment if SECRET_LIKE_NAME.search(name) and name not in SWITCHES)
    leaked += sorted(name for name in SWITCHES & set(spec.environment) if spec.environment[name] not in ("true", "false"))
    if leaked:
        problems.append(f"{', '.join(leaked)} look like credentials: pass them in `secrets`, not `environment`")
    both = sorted(set(spec.environment) & set(spec.secrets))
    if both:
        problems.append(f"{', '.join(both)} set both as environment and as secret")
    if spec.use_spot and (not spec.stateless or spec.desired_count < 2):
        problems.append("Fargate Spot is only for stateless services running at least 2 tasks")
    routes = spec.service.routes
    if listener is not None and not routes:
        problems.append("a listener, but the catalogue gives the service no routes")
    if listener is None and routes:
        problems.append("routes in the catalogue, but no listener to add them to")
    if listener is not None and any(r.sign_in for r in routes) and listener.sign_in is None:
        problems.append("a route with sign-in needs the listener's sign_in settings")
    if not spec.service.health_path.startswith("/"):
        problems.append(f"health path {spec.service.health_path!r} must start with /")
    if problems:
        raise ValueError(f"service {spec.name}: " + "; ".join(problems))
