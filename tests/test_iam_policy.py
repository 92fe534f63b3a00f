"""The policy evaluator the tenant tests rely on (tests/iam_policy.py): it must deny what IAM denies."""

from __future__ import annotations

import pytest

from tests.iam_policy import Request, decision

ALLOW_SERVICES = {
    "Effect": "Allow",
    "Action": ["ecs:UpdateService", "ecs:DeleteService"],
    "Resource": "arn:aws:ecs:us-west-2:1:service/ws/*",
}
DENY_PLATFORM_FAMILY = {
    "Effect": "Deny",
    "Action": "ecs:RegisterTaskDefinition",
    "Resource": "arn:aws:ecs:us-west-2:1:task-definition/platform-*:*",
}
ALLOW_REGISTER = {"Effect": "Allow", "Action": "ecs:Register*", "Resource": "*"}


def test_wildcards_in_actions_and_resources():
    service = Request("ecs:updateservice", "arn:aws:ecs:us-west-2:1:service/ws/alice")  # actions ignore case
    assert decision([ALLOW_SERVICES], service) == "allow"
    assert decision([ALLOW_SERVICES], Request("ecs:UpdateService", "arn:aws:ecs:us-west-2:1:service/wsx/alice")) == (
        "implicit-deny")
    assert decision([ALLOW_SERVICES], Request("ecs:CreateService", service.resource)) == "implicit-deny"
    assert decision([{**ALLOW_SERVICES, "Resource": "arn:aws:ecs:*:1:service/w?/*"}], service) == "allow"


def test_an_explicit_deny_wins():
    platform = Request("ecs:RegisterTaskDefinition", "arn:aws:ecs:us-west-2:1:task-definition/platform-api:3")
    assert decision([ALLOW_REGISTER, DENY_PLATFORM_FAMILY], platform) == "deny"
    workspace = Request("ecs:RegisterTaskDefinition", "arn:aws:ecs:us-west-2:1:task-definition/coder:3")
    assert decision([ALLOW_REGISTER, DENY_PLATFORM_FAMILY], workspace) == "allow"


@pytest.mark.parametrize(("condition", "context", "expected"), [
    ({"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}, {"aws:ResourceTag/coder_provisioned": "true"}, True),
    ({"StringEquals": {"aws:ResourceTag/coder_provisioned": "true"}}, {}, False),  # missing key: no match
    ({"StringNotEquals": {"aws:ResourceTag/team": "platform"}}, {}, True),  # missing key: every negation matches
    ({"ArnEquals": {"ecs:cluster": "arn:aws:ecs:r:1:cluster/ws"}}, {"ecs:cluster": "arn:aws:ecs:r:1:cluster/app"}, False),
    ({"ArnLike": {"ecs:cluster": "arn:aws:ecs:*:1:cluster/ws"}}, {"ecs:cluster": "arn:aws:ecs:r:1:cluster/ws"}, True),
    ({"Null": {"elasticfilesystem:AccessPointArn": "false"}}, {}, False),
    ({"Null": {"elasticfilesystem:AccessPointArn": "false"}}, {"elasticfilesystem:AccessPointArn": "arn:ap"}, True),
    ({"Bool": {"aws:SecureTransport": "false"}}, {"aws:SecureTransport": "true"}, False),
    ({"StringEqualsIfExists": {"ecs:task-definition": "x"}}, {}, True),
    ({"StringEquals": {"ecs:CreateAction": ["CreateService", "RunTask"]}}, {"ecs:CreateAction": "RunTask"}, True),
])
def test_conditions(condition, context, expected):
    statement = {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition}
    assert (decision([statement], Request("ecs:TagResource", "arn:x", context)) == "allow") is expected


def test_an_operator_it_does_not_know_fails_the_test_instead_of_passing_it():
    statement = {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"DateGreaterThan": {"aws:CurrentTime": "x"}}}
    with pytest.raises(NotImplementedError, match="DateGreaterThan"):
        decision([statement], Request("s3:GetObject", "arn:x"))
