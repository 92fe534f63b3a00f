"""The stage gates of [environments.release]: the bake after each environment's smoke tests (its alarms watched, an
alarm going into ALARM fails the stage), the deployment window on entering a stage, the approval's timeout; in the
synthesized pipeline and Stage templates, and the bake's own decisions with botocore's Stubber answering for CloudWatch."""

from __future__ import annotations

import contextlib
import datetime
import io
import json

import boto3
import pytest
from botocore.stub import Stubber

from pipeline import smoke


@pytest.fixture(scope="module")
def pipeline(assembly):
    return assembly.templates["CoderPipeline"]


def _stage(pipeline, name: str) -> dict:
    (props,) = pipeline.props("AWS::CodePipeline::Pipeline")
    return next(s for s in props["Stages"] if s["Name"] == name)


@pytest.mark.parametrize("stage_name", ["Staging", "Production"])
def test_the_smoke_step_bakes_as_long_as_the_config_says(pipeline, app_config, stage_name):
    env = app_config.environment(stage_name)
    (step,) = [a for a in _stage(pipeline, stage_name)["Actions"] if a["Name"] == f"SmokeTests{stage_name}"]
    project = pipeline.resources[step["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    (command,) = json.loads(project["Source"]["BuildSpec"])["phases"]["build"]["commands"]
    bake = env.release.bake_minutes
    assert bake > 0  # the shipped config bakes both environments
    assert command.endswith(f" --bake-minutes {bake} --alarm-prefix coder-{env.name}")
    assert project["TimeoutInMinutes"] >= 4 + bake  # the checks' deadline (240 s) and the bake fit in the build


@pytest.mark.parametrize("stage_name", ["Staging", "Production"])
def test_the_stage_smoke_role_reads_only_its_environments_alarms(assembly, app_config, stage_name):
    env = app_config.environment(stage_name)
    observability = assembly.stack(stage_name, "Observability")
    role_id = observability.logical_id("/Observability/SmokeProbe/Role/Resource")
    statements = [s for p in observability.props("AWS::IAM::Policy") if p["Roles"] == [{"Ref": role_id}]
                  for s in p["PolicyDocument"]["Statement"]]
    (alarms,) = [s for s in statements if s.get("Sid") == "ReadAlarmStates"]
    assert alarms["Action"] == "cloudwatch:DescribeAlarms"
    assert alarms["Resource"] == f"arn:aws:cloudwatch:{env.region}:{env.account}:alarm:coder-{env.name}-*"
    assert not [s for s in statements if "cloudwatch:" in json.dumps(s["Action"]) and s is not alarms]


def test_production_is_entered_only_inside_its_window(pipeline, app_config):
    production = app_config.environment("production").release
    stage = _stage(pipeline, "Production")
    assert stage["BeforeEntry"] == {"Conditions": [{"Result": "FAIL", "Rules": [{
        "Name": "DeploymentWindow",
        "RuleTypeId": {"Category": "Rule", "Owner": "AWS", "Provider": "DeploymentWindow", "Version": "1"},
        "Configuration": {"Cron": production.deployment_window, "TimeZone": production.time_zone},
    }]}]}
    assert production.deployment_window == "* * 8-16 ? * MON-THU *"
    assert "BeforeEntry" not in _stage(pipeline, "Staging")  # "" = always
    assert stage["OnFailure"] == {"Result": "ROLLBACK"}  # a failed bake rolls production back


def test_the_approval_waits_as_long_as_the_config_says(pipeline, app_config):
    (approval,) = [a for a in _stage(pipeline, "Production")["Actions"] if a["ActionTypeId"]["Category"] == "Approval"]
    assert approval["Name"] == "PromoteToProduction"
    assert approval["TimeoutInMinutes"] == app_config.environment("production").release.approval_timeout_minutes == 1440


# --- the bake's decisions ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


NOW = datetime.datetime(2026, 12, 3, 14, 0, tzinfo=datetime.UTC)
LONG_AGO = NOW - datetime.timedelta(days=2)  # in ALARM since before the release


def _cloudwatch(states: list[dict[str, str]], since: datetime.datetime = LONG_AGO):
    """A client that answers each look with the next {alarm name: reason} in ALARM (each in ALARM since `since`)."""
    client = boto3.client("cloudwatch", region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")
    stub = Stubber(client)
    for state in states:
        stub.add_response("describe_alarms", {"MetricAlarms": [
            {"AlarmName": name, "StateValue": "ALARM", "StateReason": reason, "StateUpdatedTimestamp": since}
            for name, reason in state.items()]},
            {"AlarmNamePrefix": "coder-production-", "StateValue": "ALARM", "AlarmTypes": ["MetricAlarm", "CompositeAlarm"]})
    stub.activate()
    return client, stub


def _bake(client, minutes, clock):
    return smoke.bake(lambda: client, "coder-production", minutes, interval=30, sleep=clock.sleep, clock=clock,
                      now=lambda: NOW)


def test_an_alarm_that_fires_while_baking_fails_the_bake():
    fired = {"coder-production-litellm-5xx": "Threshold Crossed: 2 out of the last 3 datapoints were greater than 5"}
    client, stub = _cloudwatch([{}, {}, {}, fired])
    clock = Clock()
    outcome, notes = _bake(client, 30, clock)
    assert not outcome.ok and outcome.kind == "bake"
    assert outcome.detail == f"went into ALARM while baking: coder-production-litellm-5xx: {fired['coder-production-litellm-5xx']}"
    assert clock.now == 60 and notes == []  # stopped at the first look that saw it, not at the end of the bake
    stub.assert_no_pending_responses()


def test_a_quiet_bake_passes_after_its_minutes_and_an_old_alarm_is_only_noted():
    old = {"coder-production-workspace-guard-intrusions": "Threshold Crossed: 1 datapoint"}
    looks = 1 + 2 * 5 + 1  # the state before, then every 30 s for 5 minutes, and the last look
    client, stub = _cloudwatch([old] * looks)
    clock = Clock()
    outcome, notes = _bake(client, 5, clock)
    assert outcome.ok and outcome.detail == "no alarm of coder-production-* went into ALARM in 5 min"
    assert clock.now == 300
    assert notes == ["in ALARM since before this release (not counted): coder-production-workspace-guard-intrusions: "
                     "Threshold Crossed: 1 datapoint"]
    stub.assert_no_pending_responses()


def test_an_old_alarm_that_recovers_and_fires_again_counts():
    name = "coder-production-redis-001-memory"
    client, stub = _cloudwatch([{name: "old"}, {name: "old"}, {}, {name: "again"}])
    clock = Clock()
    outcome, _ = _bake(client, 30, clock)
    assert not outcome.ok and f"{name}: again" in outcome.detail


def test_an_alarm_that_the_deploy_set_off_before_the_bake_fails_it_at_once():
    """The stacks deploy before the smoke tests: an alarm in ALARM for 20 minutes may be this release's."""
    name = "coder-production-litellm-5xx"
    client, stub = _cloudwatch([{name: "Threshold Crossed"}], since=NOW - datetime.timedelta(minutes=20))
    clock = Clock()
    outcome, notes = _bake(client, 30, clock)
    assert not outcome.ok and clock.now == 0 and notes == []
    assert outcome.detail == f"in ALARM since this release's deploy (the last 180 min): {name}: Threshold Crossed"
    stub.assert_no_pending_responses()


def test_a_bake_that_cannot_read_the_alarms_fails_with_the_reason():
    client = boto3.client("cloudwatch", region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")
    stub = Stubber(client)
    stub.add_client_error("describe_alarms", "AccessDenied", "not authorized to perform: cloudwatch:DescribeAlarms")
    stub.activate()
    outcome, _ = smoke.bake(lambda: client, "coder-production", 30, sleep=lambda _s: None)
    assert not outcome.ok and "cannot read the alarms" in outcome.detail and "AccessDenied" in outcome.detail


def test_the_cli_refuses_a_bake_without_alarms_to_watch():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        smoke.main(["--target-group", "arn:aws:elasticloadbalancing:us-west-2:1:targetgroup/x/y", "--bake-minutes", "5"])
    assert exit_.value.code == 2 and "a bake needs --alarm-prefix" in err.getvalue()
