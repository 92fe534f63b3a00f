"""Smoke tests through the internal ALB: every service answers on its own host name, with TLS verified.

Usable by hand, in the pipeline's CodeBuild post-step, and inside the probe Lambda (same file, stdlib only; boto3
only for the AWS modes). Three modes, combinable in one run:

- HTTP checks: `--connect ALB_HOST:443 --check coder=coder.example.com/api/v2/buildinfo ...`. Each check opens TLS to
  the ALB with SNI = the check's host, verifies the certificate for that host, sends `GET /path` with that Host,
  and passes on 2xx (or, with `@redirect:IDP_HOST`, on a redirect to that identity provider: sign-in pages).
- Via the probe Lambda: `--function NAME` runs the same HTTP checks inside the Stage's VPC (the pipeline's CodeBuild
  cannot reach an internal ALB in another account).
- Target health: `--target-group ARN` passes when every registered target is healthy.
`--role-arn` assumes a role first (the Stage's smoke role, trusted by the pipeline account).

Failing checks are retried until `--deadline`; the run never outlasts the deadline by more than a few seconds.
One line per check; exit 0 only when all passed (1 otherwise, 2 for bad arguments). `--junit` writes one testcase
per check. Network and TLS errors are outcomes, never tracebacks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree

DEFAULT_DEADLINE = 240.0
DEFAULT_INTERVAL = 5.0
ATTEMPT_TIMEOUT = 10.0  # per network operation, never more than the time left
GRACE = 2.0  # how long past the deadline an attempt still in flight may take before it is reported as a timeout
BODY_LIMIT = 65536
REDIRECT_CODES = (301, 302, 303, 307, 308)
CHECK_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<host>[a-z0-9.-]+\.[a-z0-9-]+)(?P<path>/[^\s@]*)(?:@redirect:(?P<idp>[a-z0-9.-]+))?$"
)


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Check:
    name: str
    host: str
    path: str
    redirect_host: str | None = None  # pass on a redirect to this host instead of 2xx

    @classmethod
    def parse(cls, text: str) -> Check:
        match = CHECK_RE.match(text.strip())
        if not match:
            raise UsageError(
                f"bad check {text!r}: expected NAME=HOSTNAME/PATH or NAME=HOSTNAME/PATH@redirect:IDP_HOST "
                "(e.g. coder=coder.example.com/api/v2/buildinfo)"
            )
        return cls(match["name"], match["host"], match["path"], match["idp"])

    def __str__(self) -> str:
        suffix = f"@redirect:{self.redirect_host}" if self.redirect_host else ""
        return f"{self.name}={self.host}{self.path}{suffix}"


@dataclass
class Outcome:
    name: str
    kind: str  # "http" or "target-health"
    ok: bool
    detail: str  # status line or the reason it failed
    attempts: int = 0
    seconds: float = 0.0
    status: int | None = None

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        return f"{mark} {self.name:<20} {self.detail} ({self.attempts} attempt(s), {self.seconds:.1f} s)"


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad address {text!r}: expected HOST:PORT, e.g. internal-alb.example.com:443")
    return host, int(port)


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verify certificates (against the bundle, or the system's CAs) and host names; TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _AddressedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address (the ALB) with SNI, certificate check and Host header all for `host`."""

    def __init__(self, address: tuple[str, int], host: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, address[1], context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection(self._address, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS error: {error.verify_message or error.reason}"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"DNS lookup failed: {error.strerror}"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    return f"{type(error).__name__}: {error}"  # e.g. http.client's BadStatusLine from a server that is not HTTP


def attempt(check: Check, address: tuple[str, int], context: ssl.SSLContext, timeout: float) -> tuple[bool, int | None, str]:
    """One request. Returns (passed, status, detail)."""
    connection = _AddressedHTTPSConnection(address, check.host, context, timeout)
    try:
        connection.request("GET", check.path, headers={"User-Agent": "coder-platform-smoke/1", "Connection": "close"})
        response = connection.getresponse()
        response.read(BODY_LIMIT)
        status = response.status
        detail = f"{status} {response.reason}".strip()
        if check.redirect_host:
            location = response.getheader("Location") or ""
            target = urlsplit(location).hostname
            if status in REDIRECT_CODES and target == check.redirect_host:
                return True, status, f"{status} redirect to {target} (sign-in)"
            return False, status, f"{detail}, expected a redirect to {check.redirect_host} (got {target or 'none'})"
        return 200 <= status < 300, status, detail
    except Exception as error:  # every network or TLS failure is an outcome
        return False, None, _reason(error)
    finally:
        connection.close()


def _retry(
    name: str,
    kind: str,
    once: Callable[[float], tuple[bool, int | None, str]],
    deadline: float,
    interval: float,
    clock: Callable[[], float],
) -> Outcome:
    started = clock()
    outcome = Outcome(name, kind, False, "not attempted")
    while True:
        left = deadline - clock()
        if left <= 0:
            break
        outcome.attempts += 1
        outcome.ok, outcome.status, outcome.detail = once(max(0.5, min(ATTEMPT_TIMEOUT, left)))
        if outcome.ok:
            break
        left = deadline - clock()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    outcome.seconds = clock() - started
    return outcome


def _run_parallel(jobs: Sequence[tuple[str, str, Callable[[float], tuple[bool, int | None, str]]]],
                  deadline: float, interval: float, clock: Callable[[], float] = time.monotonic) -> list[Outcome]:
    """Each job retries in its own daemon thread; whatever is still running at deadline + GRACE is a timeout."""
    results: list[Outcome | None] = [None] * len(jobs)

    def work(index: int, name: str, kind: str, once) -> None:
        results[index] = _retry(name, kind, once, deadline, interval, clock)

    threads = [threading.Thread(target=work, args=(i, *job), daemon=True) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + GRACE - clock()))
    outcomes = []
    for (name, kind, _once), result in zip(jobs, results, strict=True):
        outcomes.append(result or Outcome(name, kind, False, "timeout (still waiting at the deadline)", 1, deadline - clock()))
    return outcomes


def run_http_checks(checks: Sequence[Check], address: tuple[str, int], context: ssl.SSLContext,
                    deadline_seconds: float, interval: float = DEFAULT_INTERVAL) -> list[Outcome]:
    deadline = time.monotonic() + deadline_seconds
    jobs = [
        (check.name, "http", lambda timeout, check=check: attempt(check, address, context, timeout))
        for check in checks
    ]
    return _run_parallel(jobs, deadline, interval)


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
    return _run_parallel(jobs, deadline, interval)


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


def _split(values: Sequence[str]) -> list[str]:
    """Repeatable options also accept whitespace- or comma-separated lists (as CloudFormation outputs carry them)."""
    return [item for value in values for item in re.split(r"[\s,]+", value.strip()) if item]


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        checks = [Check.parse(text) for text in _split(args.check)]
        target_groups = _split(args.target_group)
        if args.deadline <= 0 or args.interval <= 0:
            raise UsageError("--deadline and --interval must be positive")
        if checks and not (args.connect or args.function):
            raise UsageError("--check needs --connect (direct) or --function (through the probe Lambda)")
        if not checks and not target_groups:
            raise UsageError("nothing to do: give --check and/or --target-group")
        address = parse_address(args.connect) if args.connect and not args.function else None
        if args.ca_bundle and not Path(args.ca_bundle).is_file():
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    except UsageError as error:
        parser.error(str(error))

    outcomes: list[Outcome] = []
    session = None
    if args.function or target_groups:
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
    passed = sum(o.ok for o in outcomes)
    print(f"{passed}/{len(outcomes)} passed")
    if args.junit:
        write_junit(args.junit, outcomes)
    return 0 if passed == len(outcomes) else 1


def lambda_handler(event: dict, _context=None) -> dict:
    """The probe Lambda: event {"checks": [...], "connect": "HOST:PORT"?, "deadline": seconds?}; the ALB address
    and default checks come from the function's environment (SMOKE_CONNECT, SMOKE_CHECKS)."""
    import os

    checks = [Check.parse(text) for text in _split(event.get("checks") or [os.environ.get("SMOKE_CHECKS", "")])]
    address = parse_address(event.get("connect") or os.environ["SMOKE_CONNECT"])
    deadline = min(float(event.get("deadline", DEFAULT_DEADLINE)), float(os.environ.get("SMOKE_MAX_DEADLINE", 270)))
    outcomes = run_http_checks(checks, address, tls_context(None), deadline)
    return {"results": [asdict(outcome) for outcome in outcomes]}


if __name__ == "__main__":
    sys.exit(main())
