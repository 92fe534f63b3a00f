"""Smoke tests through the internal ALB: every service answers on its own host name, with TLS verified.

Usable by hand and in the pipeline's CodeBuild post-step; the HTTP checks are the probe Lambda's own code
(`constructs_lib/lambdas/smoke_probe/probe.py`, stdlib only), boto3 serves only the AWS modes. Three modes,
combinable in one run:

- HTTP checks: `--connect ALB_HOST:443 --check coder=coder.example.com/api/v2/buildinfo ...`. Each check opens TLS to
  the ALB with SNI = the check's host, verifies the certificate for that host, sends `GET /path` with that Host,
  and passes on 2xx (or, with `@redirect:IDP_HOST`, on a redirect to that identity provider: sign-in pages).
- Via the probe Lambda: `--function NAME` runs the same HTTP checks inside the Stage's VPC (the pipeline's CodeBuild
  cannot reach an internal ALB in another account).
- Target health: `--target-group ARN` passes when every registered target is healthy.
- Bake: `--bake-minutes N --alarm-prefix PREFIX`, once every other check has passed: the environment's alarms (names
  `PREFIX-*`) are watched for N minutes; one that goes into ALARM in that time fails the run (in production the stage
  then rolls back), and so does one in ALARM at the start that went into it in the last 3 hours (the deploy ran
  before the smoke tests); one in ALARM for longer is reported, not counted.
`--role-arn` assumes a role first (the Stage's smoke role, trusted by the pipeline account; assumed again before its
hour runs out while baking).

Failing checks are retried until `--deadline`; the run never outlasts the deadline by more than a few seconds.
One line per check; exit 0 only when all passed (1 otherwise, 2 for bad arguments). `--junit` writes one testcase
per check. Network and TLS errors are outcomes, never tracebacks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

from constructs_lib.lambdas.smoke_probe.probe import (
    DEFAULT_DEADLINE,
    DEFAULT_INTERVAL,
    Check,
    Outcome,
    UsageError,
    parse_address,
    run_http_checks,
    run_parallel,
    split_values,
    tls_context,
)


def _health_once(client, arn: str) -> tuple[bool, int | None, str]:
    try:
        descriptions = client.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    except Exception as error:  # access denied, throttling, unknown group: an outcome, not a traceback
        return False, None, f"{type(error).__name__}: {error}"
    states = [d["TargetHealth"]["State"] for d in descriptions]
    if not states:
        return False, None, "no registered targets"
    counts = ", ".join(f"{state} {states.count(state)}" for state in sorted(set(states)))
    return all(s == "healthy" for s in states), None, f"{len(states)} target(s): {counts}"


def run_target_health(client, target_group_arns: Sequence[str], deadline_seconds: float,
                      interval: float = DEFAULT_INTERVAL) -> list[Outcome]:
    deadline = time.monotonic() + deadline_seconds
    jobs = [
        (_target_group_name(arn), "target-health", lambda _timeout, arn=arn: _health_once(client, arn))
        for arn in target_group_arns
    ]
    return run_parallel(jobs, deadline, interval)


def _target_group_name(arn: str) -> str:
    # arn:aws:elasticloadbalancing:region:account:targetgroup/NAME/ID
    parts = arn.split(":targetgroup/", 1)
    return parts[1].split("/", 1)[0] if len(parts) == 2 else arn


def run_via_function(client, function_name: str, checks: Sequence[Check], connect: str | None,
                     deadline_seconds: float) -> list[Outcome]:
    payload = {"checks": [str(c) for c in checks], "deadline": deadline_seconds}
    if connect:
        payload["connect"] = connect
    try:
        response = client.invoke(FunctionName=function_name, Payload=json.dumps(payload).encode())
        body = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError") or not isinstance(body, dict) or "results" not in body:
            raise RuntimeError(f"the probe failed: {str(body)[:300]}")
        return [Outcome(**result) for result in body["results"]]
    except Exception as error:
        detail = f"probe function {function_name}: {type(error).__name__}: {error}"
        return [Outcome(check.name, "http", False, detail) for check in checks]


BAKE_INTERVAL = 30.0  # seconds between two looks at the alarms (CloudWatch evaluates most alarms every minute)


RECENT_ALARM_MINUTES = 180  # an alarm that went into ALARM this recently may be this release's (its deploy ran first)


def _in_alarm(client, prefix: str) -> dict[str, tuple[str, datetime.datetime | None]]:
    """{alarm name: (its reason, when it went into ALARM)} of every alarm `prefix-*` (metric and composite) now in
    ALARM."""
    found: dict[str, tuple[str, datetime.datetime | None]] = {}
    for page in client.get_paginator("describe_alarms").paginate(
        AlarmNamePrefix=f"{prefix}-", StateValue="ALARM", AlarmTypes=["MetricAlarm", "CompositeAlarm"]
    ):
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
            found[alarm["AlarmName"]] = (alarm.get("StateReason", ""), alarm.get("StateUpdatedTimestamp"))
    return found


def bake(client_factory, prefix: str, minutes: float, *, interval: float = BAKE_INTERVAL, sleep=time.sleep,
         clock=time.monotonic, now=None, recent_minutes: float = RECENT_ALARM_MINUTES) -> tuple[Outcome, list[str]]:
    """Watch the environment's alarms for `minutes`. Fails when an alarm is in ALARM at the start and went into it in the
    last `recent_minutes` (the deploy ran before the smoke tests: it may be this release's doing), and at the first
    alarm that goes into ALARM while watching; an alarm in ALARM for longer is a note. `client_factory()` gives a
    CloudWatch client (called again for every look, so that credentials can be renewed)."""
    now = now or (lambda: datetime.datetime.now(datetime.UTC))
    start = clock()
    looks = 0
    try:
        before = _in_alarm(client_factory(), prefix)
        cutoff = now() - datetime.timedelta(minutes=recent_minutes)
        recent = sorted(name for name, (_reason, since) in before.items() if since is None or since >= cutoff)
        if recent:
            detail = "; ".join(f"{name}: {before[name][0]}" for name in recent)
            return Outcome("bake", "bake", False, f"in ALARM since this release's deploy (the last {recent_minutes:g} "
                           f"min): {detail}", 1, clock() - start), []
        notes = [f"in ALARM since before this release (not counted): {name}: {reason}"
                 for name, (reason, _since) in sorted(before.items())]
        while True:
            looks += 1
            current = _in_alarm(client_factory(), prefix)
            fired = sorted(set(current) - set(before))
            if fired:
                detail = "; ".join(f"{name}: {current[name][0]}" for name in fired)
                return Outcome("bake", "bake", False, f"went into ALARM while baking: {detail}", looks, clock() - start), notes
            before = {name: state for name, state in before.items() if name in current}  # one that recovers counts again
            if clock() - start >= minutes * 60:
                return Outcome("bake", "bake", True, f"no alarm of {prefix}-* went into ALARM in {minutes:g} min", looks,
                               clock() - start), notes
            sleep(min(interval, max(0.0, minutes * 60 - (clock() - start))))
    except Exception as error:  # access denied, throttling: an outcome, not a traceback; the bake did not hold
        return Outcome("bake", "bake", False, f"cannot read the alarms: {type(error).__name__}: {error}", looks,
                       clock() - start), []


def write_junit(path: Path, outcomes: Sequence[Outcome], suite: str = "smoke") -> None:
    failures = sum(not o.ok for o in outcomes)
    root = ElementTree.Element("testsuites", name=suite, tests=str(len(outcomes)), failures=str(failures))
    testsuite = ElementTree.SubElement(
        root, "testsuite", name=suite, tests=str(len(outcomes)), failures=str(failures), errors="0",
        time=f"{max((o.seconds for o in outcomes), default=0):.3f}",
    )
    for outcome in outcomes:
        case = ElementTree.SubElement(testsuite, "testcase", classname=f"{suite}.{outcome.kind}", name=outcome.name,
                                      time=f"{outcome.seconds:.3f}")
        if outcome.ok:
            ElementTree.SubElement(case, "system-out").text = f"{outcome.detail} after {outcome.attempts} attempt(s)"
        else:
            failure = ElementTree.SubElement(case, "failure", message=outcome.detail, type=outcome.kind)
            failure.text = f"{outcome.detail} after {outcome.attempts} attempt(s)"
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


SESSION_RENEWAL_SECONDS = 40 * 60


def _session(role_arn: str | None, region: str | None):
    import boto3  # only the AWS modes need it

    if not role_arn:
        return boto3.session.Session(region_name=region)
    credentials = boto3.client("sts", region_name=region).assume_role(
        RoleArn=role_arn, RoleSessionName="smoke-tests", DurationSeconds=3600
    )["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=region,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", help="HOST:PORT of the ALB (HTTP checks; optional with --function)")
    parser.add_argument("--check", action="append", default=[], metavar="NAME=HOSTNAME/PATH[@redirect:IDP_HOST]",
                        help="a service to check (repeatable; a space-separated list is accepted too)")
    parser.add_argument("--ca-bundle", help="PEM file of CAs to trust (default: the system's)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="seconds for the whole run")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between retries")
    parser.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    parser.add_argument("--function", help="run the HTTP checks in this probe Lambda (name or ARN)")
    parser.add_argument("--target-group", action="append", default=[], metavar="ARN",
                        help="target group whose registered targets must all be healthy (repeatable)")
    parser.add_argument("--role-arn", help="assume this role first (AWS modes)")
    parser.add_argument("--region", help="AWS region (AWS modes; default: the environment's)")
    parser.add_argument("--bake-minutes", type=float, default=0.0,
                        help="after every check passed, watch the alarms PREFIX-* this long (0: no bake)")
    parser.add_argument("--alarm-prefix", help="the environment's alarm name prefix (with --bake-minutes)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        checks = [Check.parse(text) for text in split_values(args.check)]
        target_groups = split_values(args.target_group)
        if args.deadline <= 0 or args.interval <= 0:
            raise UsageError("--deadline and --interval must be positive")
        if checks and not (args.connect or args.function):
            raise UsageError("--check needs --connect (direct) or --function (through the probe Lambda)")
        if not checks and not target_groups:
            raise UsageError("nothing to do: give --check and/or --target-group")
        address = parse_address(args.connect) if args.connect and not args.function else None
        if args.ca_bundle and not Path(args.ca_bundle).is_file():
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
        if args.bake_minutes < 0 or (args.bake_minutes > 0 and not args.alarm_prefix):
            raise UsageError("--bake-minutes must be >= 0, and a bake needs --alarm-prefix (the alarms to watch)")
    except UsageError as error:
        parser.error(str(error))

    outcomes: list[Outcome] = []
    session = None
    if args.function or target_groups or args.bake_minutes:
        try:
            session = _session(args.role_arn, args.region)
        except Exception as error:
            print(f"FAIL cannot get AWS credentials: {type(error).__name__}: {error}")
            return 1
    if checks and args.function:
        from botocore.config import Config

        client = session.client("lambda", config=Config(read_timeout=args.deadline + 60, retries={"max_attempts": 0}))
        outcomes += run_via_function(client, args.function, checks, args.connect, args.deadline)
    elif checks:
        outcomes += run_http_checks(checks, address, tls_context(args.ca_bundle), args.deadline, args.interval)
    if target_groups:
        outcomes += run_target_health(session.client("elbv2"), target_groups, args.deadline, args.interval)

    for outcome in outcomes:
        print(outcome.line())
    if args.bake_minutes and outcomes and all(o.ok for o in outcomes):
        print(f"Baking: watching the alarms {args.alarm_prefix}-* for {args.bake_minutes:g} min", flush=True)
        renewed = {"session": session, "at": time.monotonic()}

        def cloudwatch():
            if time.monotonic() - renewed["at"] > SESSION_RENEWAL_SECONDS:  # the role's session lasts an hour
                renewed.update(session=_session(args.role_arn, args.region), at=time.monotonic())
            return renewed["session"].client("cloudwatch")

        outcome, notes = bake(cloudwatch, args.alarm_prefix, args.bake_minutes)
        for note in notes:
            print(f"NOTE {note}")
        print(outcome.line())
        outcomes.append(outcome)
    passed = sum(o.ok for o in outcomes)
    print(f"{passed}/{len(outcomes)} passed")
    if args.junit:
        write_junit(args.junit, outcomes)
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
