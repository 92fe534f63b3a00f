"""The environment's alarms beyond each service's own (load balancer, database, cache, file system, Lambdas) and its
CloudWatch dashboard, grouped by tier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from constructs import Construct

from constructs_lib.alarms import FIVE_MINUTES, LT, ONE_MINUTE, Alarms
from constructs_lib.fargate_service import FargateService
from constructs_lib.stable_ids import Group

GIB = 1024**3
MIB = 1024**2
REDIS_NODES = ("001", "002")  # primary and replica of the replication group


@dataclass(frozen=True)
class Watched:
    """What the environment runs, as the alarms and the dashboard need it."""

    load_balancer: elbv2.IApplicationLoadBalancer
    database: rds.IDatabaseInstance
    database_max_storage_gb: int
    redis_group_id: str  # the replication group's id; its nodes are <id>-001 and <id>-002
    file_systems: Mapping[str, str]  # "platform" and "workspaces" -> file system id
    functions: Mapping[str, lambda_.IFunction]  # title -> function
    services: Sequence[FargateService]


class Operations(Group):
    """Alarms on every tier (each with a description that says what to look at first) and the dashboard
    `<prefix>`: load balancer, services, database, cache, file system, Lambdas."""

    def __init__(self, scope: Construct, construct_id: str, *, alarms: Alarms, watched: Watched) -> None:
        super().__init__(scope, construct_id)
        self._alarms = alarms
        self.watched = watched
        self.alarms: list[cloudwatch.Alarm] = []
        self._load_balancer()
        self._database()
        self._cache()
        self._file_system()
        for title, function in watched.functions.items():
            self._add(f"{_id(title)}ErrorsAlarm", name=f"{_slug(title)}-errors", threshold=0, periods=1,
                      metric=function.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
                      description=f"The {title} Lambda failed. Look first at its log group; a deploy that ran it "
                      "(CloudFormation custom resource) shows the reason in the stack's events.")
        self.dashboard = self._dashboard()

    def _add(self, construct_id: str, **kwargs) -> cloudwatch.Alarm:
        alarm = self._alarms.alarm(self, construct_id, **kwargs)
        self.alarms.append(alarm)
        return alarm

    # --- alarms ---------------------------------------------------------------------------------------------------

    def _load_balancer(self) -> None:
        metrics, limits = self.watched.load_balancer.metrics, self._alarms.thresholds
        requests = metrics.request_count(period=ONE_MINUTE, statistic="Sum")
        self._add("Alb5xxAlarm", name="alb-5xx", threshold=limits.alb_5xx_percent, datapoints=2,
                  metric=cloudwatch.MathExpression(
                      expression="100 * errors / requests", period=ONE_MINUTE, label="ALB 5xx %",
                      using_metrics={"errors": metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=ONE_MINUTE,
                                                                     statistic="Sum"), "requests": requests}),
                  description=f"More than {limits.alb_5xx_percent} % of requests answered 5xx by the load balancer "
                  "itself (2 of 3 minutes): no healthy target behind a rule, or targets refusing connections. Look first "
                  "at unhealthy hosts on the dashboard.")
        self._add("TargetsAlb5xxAlarm", name="targets-5xx", threshold=limits.target_5xx_percent, datapoints=2,
                  metric=cloudwatch.MathExpression(
                      expression="100 * errors / requests", period=ONE_MINUTE, label="targets' 5xx %",
                      using_metrics={"errors": metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                                                                        period=ONE_MINUTE, statistic="Sum"),
                                     "requests": requests}),
                  description=f"More than {limits.target_5xx_percent} % of all requests answered 5xx by the services "
                  "(2 of 3 minutes). Look first at each service's 5xx alarm to find which one.")

    def _database(self) -> None:
        database, limits = self.watched.database, self._alarms.thresholds
        floor = self.watched.database_max_storage_gb * GIB * limits.rds_free_storage_percent / 100
        self._add("DatabaseCpuAlarm", name="rds-cpu", threshold=limits.rds_cpu_percent,
                  metric=database.metric_cpu_utilization(period=FIVE_MINUTES),
                  description=f"PostgreSQL CPU above {limits.rds_cpu_percent} % for 15 minutes. Look first at "
                  "Performance Insights (top SQL) in the RDS console.")
        self._add("DatabaseStorageAlarm", name="rds-free-storage", threshold=floor, comparison=LT, periods=2,
                  metric=database.metric_free_storage_space(period=FIVE_MINUTES),
                  description=f"PostgreSQL free storage below {limits.rds_free_storage_percent} % of the autoscaling "
                  f"ceiling ({self.watched.database_max_storage_gb} GiB): it stops growing there. Look first at what "
                  "grows (Langfuse and LiteLLM tables), then raise max_allocated_storage_gb.")
        self._add("DatabaseMemoryAlarm", name="rds-freeable-memory", comparison=LT,
                  threshold=limits.rds_freeable_memory_mib * MIB,
                  metric=database.metric_freeable_memory(period=FIVE_MINUTES),
                  description=f"PostgreSQL freeable memory below {limits.rds_freeable_memory_mib} MiB for 15 minutes: "
                  "it will swap. Look first at connections, then raise the instance class.")
        self._add("DatabaseConnectionsAlarm", name="rds-connections", threshold=limits.rds_connections,
                  metric=database.metric_database_connections(period=FIVE_MINUTES),
                  description=f"More than {limits.rds_connections} PostgreSQL connections for 15 minutes. Look first "
                  "at which app holds them (pg_stat_activity by usename: coder, litellm, langfuse).")

    def _redis(self, metric: str, node: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace="AWS/ElastiCache", metric_name=metric, period=FIVE_MINUTES, statistic="Maximum",
                                 dimensions_map={"CacheClusterId": f"{self.watched.redis_group_id}-{node}"})

    def _cache(self) -> None:
        limits = self._alarms.thresholds
        for node in REDIS_NODES:
            self._add(f"RedisMemory{node}Alarm", name=f"redis-{node}-memory", threshold=limits.redis_memory_percent,
                      metric=self._redis("DatabaseMemoryUsagePercentage", node), periods=2,
                      description=f"Redis node {node} memory above {limits.redis_memory_percent} %: with noeviction, "
                      "Langfuse's writes fail when it is full. Look first at Langfuse's queue backlog (worker logs); "
                      "then a larger node type.")
            self._add(f"RedisCpu{node}Alarm", name=f"redis-{node}-cpu", threshold=limits.redis_cpu_percent,
                      metric=self._redis("EngineCPUUtilization", node),
                      description=f"Redis node {node} engine CPU above {limits.redis_cpu_percent} % for 15 minutes. "
                      "Look first at Langfuse's ingestion rate on the dashboard.")
            self._add(f"RedisEvictions{node}Alarm", name=f"redis-{node}-evictions", threshold=0, periods=1,
                      metric=self._redis("Evictions", node),
                      description=f"Redis node {node} evicted keys, which loses Langfuse's queued events: look first at "
                      "the cluster's parameter group (maxmemory-policy must be noeviction).")

    def _file_system(self) -> None:
        limits = self._alarms.thresholds
        watched = {  # construct id prefix (the platform's keeps the ids of when it was the only one), name, what is on it
            "platform": ("", "efs", "ClickHouse and Coder live on it", "ClickHouse's merges"),
            "workspaces": ("Workspaces", "workspaces-efs", "workspaces' home directories", "the busiest workspaces"),
        }
        for label, (prefix, name, holds, first) in watched.items():
            fs = self.watched.file_systems[label]

            def efs(metric: str, statistic: str, fs: str = fs) -> cloudwatch.Metric:
                return cloudwatch.Metric(namespace="AWS/EFS", metric_name=metric, period=FIVE_MINUTES,
                                         statistic=statistic, dimensions_map={"FileSystemId": fs})

            self._add(f"{prefix}FileSystemIoAlarm", name=f"{name}-io-limit", threshold=limits.efs_io_limit_percent,
                      metric=efs("PercentIOLimit", "Maximum"),
                      description=f"EFS ({label}) at {limits.efs_io_limit_percent} % of its I/O limit for 15 minutes "
                      f"({holds}): they slow down. Look first at {first}.")
            self._add(f"{prefix}FileSystemThroughputAlarm", name=f"{name}-throughput",
                      threshold=limits.efs_io_limit_percent,
                      metric=cloudwatch.MathExpression(
                          expression="100 * (io / PERIOD(io)) / (permitted * 1048576)", period=FIVE_MINUTES,
                          label="throughput used %",
                          using_metrics={"io": efs("MeteredIOBytes", "Sum"),
                                         "permitted": efs("PermittedThroughput", "Average")}),
                      description=f"EFS ({label}) throughput above {limits.efs_io_limit_percent} % of what it is "
                      "permitted (bursting credits). Look first at BurstCreditBalance; elastic throughput if it runs out.")

    # --- dashboard --------------------------------------------------------------------------------------------------

    def _dashboard(self) -> cloudwatch.Dashboard:
        w = self.watched
        lb = w.load_balancer.metrics

        def graph(title: str, *metrics: cloudwatch.IMetric) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(title=title, left=list(metrics), width=8, height=6)

        def header(text: str) -> cloudwatch.TextWidget:
            return cloudwatch.TextWidget(markdown=f"## {text}", width=24, height=1)

        services = [s for s in w.services]
        rows: list[list[cloudwatch.IWidget]] = [
            [header("Load balancer")],
            [graph("Requests", lb.request_count(period=ONE_MINUTE, statistic="Sum")),
             graph("5xx (ALB, targets)", lb.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=ONE_MINUTE, statistic="Sum"),
                   lb.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=ONE_MINUTE, statistic="Sum")),
             graph("Unhealthy hosts", *[s.target_metric("UnHealthyHostCount", "Maximum", ONE_MINUTE, s.spec.name)
                                        for s in services if s.routed])],
            [header("Services")],
            [graph("CPU %", *[s.service.metric_cpu_utilization(period=FIVE_MINUTES, label=s.spec.name) for s in services]),
             graph("Memory %", *[s.service.metric_memory_utilization(period=FIVE_MINUTES, label=s.spec.name) for s in services]),
             graph("p95 response time (s)", *[s.target_metric("TargetResponseTime", "p95", FIVE_MINUTES, s.spec.name)
                                              for s in services if s.routed and not s.spec.service.long_lived_connections])],
            [header("Database (PostgreSQL)")],
            [graph("CPU %", w.database.metric_cpu_utilization(period=FIVE_MINUTES)),
             graph("Free storage (bytes)", w.database.metric_free_storage_space(period=FIVE_MINUTES)),
             graph("Connections", w.database.metric_database_connections(period=FIVE_MINUTES))],
            [header("Cache (Redis)")],
            [graph("Memory %", *[self._redis("DatabaseMemoryUsagePercentage", n) for n in REDIS_NODES]),
             graph("Engine CPU %", *[self._redis("EngineCPUUtilization", n) for n in REDIS_NODES]),
             graph("Evictions", *[self._redis("Evictions", n) for n in REDIS_NODES])],
            [header("File system (EFS) and Lambdas")],
            [graph("I/O limit %", *[cloudwatch.Metric(namespace="AWS/EFS", metric_name="PercentIOLimit", period=FIVE_MINUTES,
                                                      statistic="Maximum", label=label, dimensions_map={"FileSystemId": fs})
                                    for label, fs in w.file_systems.items()]),
             graph("Lambda errors", *[f.metric_errors(period=FIVE_MINUTES, statistic="Sum", label=t)
                                      for t, f in w.functions.items()]),
             cloudwatch.AlarmStatusWidget(title="Alarms", width=8, height=6,
                                          alarms=[*self.alarms, *[a for s in services for a in s.alarms]])],
        ]
        return cloudwatch.Dashboard(self, "Dashboard", dashboard_name=self._alarms.prefix, widgets=rows,
                                    default_interval=Duration.hours(6))


def _id(title: str) -> str:
    return "".join(part.capitalize() for part in title.replace("-", " ").split())


def _slug(title: str) -> str:
    return "-".join(title.lower().split())
