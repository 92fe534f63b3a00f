"""The environment's alarm topic and the one way alarms are made: named, described, sent to it on ALARM and OK."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from config.model import AlarmsConfig

GT = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
LT = cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD


class AlarmTopic(Construct):
    """`<qualifier>-alarms`: encrypted with a key of its own (rotated), HTTPS publishing only, e-mailed to `email`.
    CloudWatch alarms of this account may use the key to publish; nothing else."""

    def __init__(self, scope: Construct, construct_id: str, *, qualifier: str, email: str | None) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            alias=f"alias/{qualifier}-alarms",
            description=f"Encrypts the {qualifier} alarm topic",
            enable_key_rotation=True,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsOfThisAccount",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        self.topic = sns.Topic(
            self, "Topic", topic_name=f"{qualifier}-alarms", display_name=f"{qualifier} alarms",
            master_key=self.key, enforce_ssl=True,
        )
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))


@dataclass(frozen=True)
class Alarms:
    """What every alarm of an environment shares: the topic, the thresholds, the name prefix."""

    topic: sns.ITopic
    thresholds: AlarmsConfig
    prefix: str  # `<project>-<env>`: alarm names are `<prefix>-<what>`

    def alarm(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        description: str,
        comparison: cloudwatch.ComparisonOperator = GT,
        periods: int = 3,
        datapoints: int | None = None,
    ) -> cloudwatch.Alarm:
        """An alarm named `<prefix>-<name>`, notifying the topic on ALARM and on OK; missing data is not a breach.
        `description` says what to look at first."""
        alarm = cloudwatch.Alarm(
            scope,
            construct_id,
            alarm_name=f"{self.prefix}-{name}",
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=periods,
            datapoints_to_alarm=datapoints or periods,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(self._action)
        alarm.add_ok_action(self._action)
        return alarm

    @functools.cached_property
    def _action(self) -> actions.SnsAction:
        """One action object for every alarm (it only names the topic): each object made costs a call into CDK."""
        return actions.SnsAction(self.topic)


ONE_MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)
