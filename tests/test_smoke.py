"""`python -m pipeline.smoke` against real local TLS servers (certificates chosen by SNI, issued by a CA the tests
generate), and its AWS modes against moto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from xml.etree import ElementTree

import pytest

from pipeline import smoke
from tests.assembly import ROOT
from tests.certificates import LocalCA
from tests.lambdas import load_handler
from tests.tls_servers import FakeAlb, SilentServer, closed_port, fixed, healthy_after

DOMAIN = "coder.example.test"
CHECKS = [
    f"coder=coder.{DOMAIN}/api/v2/buildinfo",
    f"litellm=ai.{DOMAIN}/health/readiness",
    f"langfuse=langfuse.{DOMAIN}/api/public/health",
    f"admin=admin.{DOMAIN}/@redirect:login.example.test",
]


@pytest.fixture
def ca(tmp_path):
    return LocalCA(tmp_path)


def alb(ca, routes, *, extra_certs=None):
    wildcard = ca.issue(DOMAIN, f"*.{DOMAIN}")
    other = ca.issue("other.example.test")
    certificates = {DOMAIN: wildcard, f"*.{DOMAIN}": wildcard}  # as the ALB's ACM certificate
    certificates.update(extra_certs or {})
    return FakeAlb(other, certificates, routes)


def healthy_routes():
    return {
        f"coder.{DOMAIN}": fixed(200, "/api/v2/buildinfo"),
        f"ai.{DOMAIN}": fixed(200, "/health/readiness"),
        f"langfuse.{DOMAIN}": fixed(200, "/api/public/health"),
        f"admin.{DOMAIN}": fixed(302, "/", {"Location": "https://login.example.test/tenant/oauth2/v2.0/authorize?x=1"}),
    }


def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.smoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def check_args(*checks: str) -> list[str]:
    return [arg for check in checks for arg in ("--check", check)]


def test_all_healthy(ca, tmp_path):
    report = tmp_path / "reports" / "smoke.xml"
    with alb(ca, healthy_routes()) as server:
        code, out, err, _ = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "10",
                                    "--junit", str(report), *check_args(*CHECKS))
        # Every request carried SNI and Host of its own service, not the ALB's address.
        assert set(server.server_names) >= {f"coder.{DOMAIN}", f"ai.{DOMAIN}", f"langfuse.{DOMAIN}", f"admin.{DOMAIN}"}
        assert (f"coder.{DOMAIN}", "/api/v2/buildinfo") in server.requests
    assert code == 0, out + err
    assert "PASS coder" in out and "200 OK" in out
    assert "302 redirect to login.example.test (sign-in)" in out
    assert out.strip().endswith("4/4 passed")
    assert "Traceback" not in err
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "0")
    assert sorted(c.get("name") for c in suite.iter("testcase")) == ["admin", "coder", "langfuse", "litellm"]


def test_one_service_answers_5xx(ca, tmp_path):
    routes = healthy_routes() | {f"ai.{DOMAIN}": fixed(503, "/health/readiness")}
    report = tmp_path / "smoke.xml"
    with alb(ca, routes) as server:
        code, out, err, elapsed = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                          "--interval", "0.25", "--junit", str(report), *check_args(*CHECKS))
    assert code == 1
    assert "FAIL litellm" in out and "503 Service Unavailable" in out
    assert "PASS coder" in out and out.strip().endswith("3/4 passed")
    assert elapsed < 1 + 5, "the run outlasted its deadline"
    failures = [c for c in ElementTree.parse(report).getroot().iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["litellm"]
    assert failures[0].find("failure").get("message") == "503 Service Unavailable"


def test_host_the_server_does_not_serve(ca):
    with alb(ca, healthy_routes()) as server:
        code, out, err, _ = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                    "--interval", "0.25", *check_args(f"ghost=ghost.{DOMAIN}/health"))
    # ghost.<domain> is covered by the wildcard certificate, but no rule claims it: the listener's 404.
    assert code == 1 and "FAIL ghost" in out and "404 Not Found" in out


def test_certificate_that_does_not_match_the_host(ca):
    with alb(ca, healthy_routes() | {"billing.example.test": fixed(200)}) as server:
        code, out, err, _ = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                    "--interval", "0.25", *check_args("billing=billing.example.test/health"))
    assert code == 1
    assert "FAIL billing" in out and "TLS error" in out and "Hostname mismatch" in out
    assert "Traceback" not in err


def test_untrusted_certificate_authority(ca, tmp_path):
    other_ca = LocalCA(tmp_path / "other")
    with alb(ca, healthy_routes()) as server:
        code, out, _, _ = run_cli("--connect", server.address, "--ca-bundle", str(other_ca.bundle), "--deadline", "1",
                                  *check_args(CHECKS[0]))
    assert code == 1 and "TLS error" in out and "unable to get local issuer certificate" in out


def test_unreachable_address_is_refused_not_a_traceback(ca):
    code, out, err, elapsed = run_cli("--connect", closed_port(), "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                      "--interval", "0.25", *check_args(*CHECKS[:2]))
    assert code == 1
    assert out.count("connection refused") == 2
    assert "Traceback" not in err and elapsed < 1 + 5


def test_silent_server_times_out_within_the_deadline(ca):
    with SilentServer() as silent:
        code, out, err, elapsed = run_cli("--connect", silent.address, "--ca-bundle", str(ca.bundle), "--deadline", "1.5",
                                          *check_args(CHECKS[0]))
    assert code == 1 and "FAIL coder" in out and "timeout" in out
    assert elapsed < 1.5 + 5, f"took {elapsed:.1f} s for a 1.5 s deadline"


def test_service_that_turns_healthy_before_the_deadline_passes(ca):
    routes = healthy_routes() | {f"slow.{DOMAIN}": healthy_after(0.6, "/health")}
    with alb(ca, routes) as server:
        code, out, err, elapsed = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "20",
                                          "--interval", "0.2", *check_args(f"slow=slow.{DOMAIN}/health"))
    assert code == 0, out
    attempts = int(out.split("(")[1].split(" ")[0])
    assert attempts >= 3 and "PASS slow" in out
    assert elapsed < 15


def test_redirect_check_fails_on_2xx_or_a_foreign_redirect(ca):
    routes = healthy_routes() | {f"admin.{DOMAIN}": fixed(302, "/", {"Location": "https://evil.example.test/x"})}
    with alb(ca, routes) as server:
        code, out, _, _ = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                  *check_args(CHECKS[3]))
    assert code == 1 and "expected a redirect to login.example.test (got evil.example.test)" in out
    routes = healthy_routes() | {f"admin.{DOMAIN}": fixed(200, "/")}
    with alb(ca, routes) as server:
        code, out, _, _ = run_cli("--connect", server.address, "--ca-bundle", str(ca.bundle), "--deadline", "1",
                                  *check_args(CHECKS[3]))
    assert code == 1 and "200 OK, expected a redirect" in out  # an admin UI open without sign-in is a failure


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connect", "alb:443", "--check", "coder"], "bad check 'coder': expected NAME=HOSTNAME/PATH"),
        (["--connect", "alb", "--check", CHECKS[0]], "bad address 'alb': expected HOST:PORT"),
        (["--check", CHECKS[0]], "--check needs --connect (direct) or --function"),
        ([], "nothing to do"),
        (["--connect", "alb:443", "--check", CHECKS[0], "--ca-bundle", "/nonexistent.pem"], "no such file"),
        (["--connect", "alb:443", "--check", CHECKS[0], "--deadline", "0"], "must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    code, out, err, _ = run_cli(*args)
    assert code == 2 and message in err and "Traceback" not in err


def test_checks_accept_a_space_separated_list():
    assert [c.name for c in map(smoke.Check.parse, smoke.split_values([" ".join(CHECKS)]))] == [
        "coder", "litellm", "langfuse", "admin"]
    assert str(smoke.Check.parse(CHECKS[3])) == CHECKS[3]


# --- AWS modes (moto) ------------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for name, value in {"AWS_DEFAULT_REGION": "us-west-2", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


def target_group(states: list[str], monkeypatch) -> str:
    """A target group with IP targets whose health moto reports as `states` (moto alone knows only healthy)."""
    import boto3
    from moto.elbv2 import models

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    elbv2 = boto3.client("elbv2")
    arn = elbv2.create_target_group(Name="-".join(["tg", str(len(states)), *states])[:32], Protocol="HTTP", Port=4000,
                                    VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    targets = [{"Id": f"10.1.10.{i + 10}", "Port": 4000} for i in range(len(states))]
    if targets:
        elbv2.register_targets(TargetGroupArn=arn, Targets=targets)
    by_ip = {t["Id"]: state for t, state in zip(targets, states, strict=True)}
    original = models.FakeTargetGroup.health_for

    def health_for(self, target, ec2_backend):
        status = original(self, target, ec2_backend)
        if target["Id"] in by_ip:
            status.status = by_ip[target["Id"]]
        return status

    monkeypatch.setattr(models.FakeTargetGroup, "health_for", health_for)
    return arn


@pytest.mark.parametrize(
    ("states", "ok", "detail"),
    [
        (["healthy", "healthy"], True, "2 target(s): healthy 2"),
        (["healthy", "unhealthy"], False, "2 target(s): healthy 1, unhealthy 1"),
        (["initial"], False, "1 target(s): initial 1"),
        (["healthy", "draining"], False, "2 target(s): draining 1, healthy 1"),
        ([], False, "no registered targets"),
    ],
)
def test_target_health(aws, monkeypatch, capsys, tmp_path, states, ok, detail):
    arn = target_group(states, monkeypatch)
    report = tmp_path / "health.xml"
    # moto keeps each account apart: the role is in the account that holds the target group, as in a Stage.
    code = smoke.main(["--target-group", arn, "--role-arn", "arn:aws:iam::123456789012:role/smoke",
                       "--region", "us-west-2", "--deadline", "0.5", "--interval", "0.1", "--junit", str(report)])
    out = capsys.readouterr().out
    assert code == (0 if ok else 1)
    assert detail in out
    case = ElementTree.parse(report).getroot().find("testsuite/testcase")
    assert case.get("classname") == "smoke.target-health"
    assert (case.find("failure") is None) == ok


def test_target_health_failure_to_read_is_an_outcome(aws, capsys):
    missing = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/missing/0123456789abcdef"
    code = smoke.main(["--target-group", missing, "--region", "us-west-2", "--deadline", "0.5"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL missing" in out and "TargetGroupNotFound" in out


def test_role_is_assumed_before_any_aws_call(aws):
    session = smoke._session("arn:aws:iam::222222222222:role/smoke", "us-west-2")
    credentials = session.get_credentials()
    assert credentials.access_key != "testing" and credentials.token  # temporary credentials of the role


def test_via_the_probe_function(ca, monkeypatch):
    """The pipeline step invokes the probe Lambda: here its handler runs in-process behind a Lambda-like client,
    against the fake ALB, with its address and CA bundle coming from the function's environment."""
    import io

    class LambdaClient:
        def __init__(self):
            self.payloads = []

        def invoke(self, FunctionName, Payload):  # noqa: N803 (boto3's argument names)
            self.payloads.append(json.loads(Payload))
            result = load_handler("smoke_probe").handler(json.loads(Payload))
            return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}

    monkeypatch.setenv("SSL_CERT_FILE", str(ca.bundle))  # the Lambda trusts the system's CAs
    with alb(ca, healthy_routes()) as server:
        monkeypatch.setenv("SMOKE_CONNECT", server.address)
        client = LambdaClient()
        checks = [smoke.Check.parse(c) for c in CHECKS]
        outcomes = smoke.run_via_function(client, "probe", checks, None, deadline_seconds=5)
    assert [o.name for o in outcomes] == ["coder", "litellm", "langfuse", "admin"]
    assert all(o.ok for o in outcomes), [o.line() for o in outcomes]
    assert client.payloads == [{"checks": CHECKS, "deadline": 5}]


def test_probe_function_errors_fail_every_check():
    import io

    class BrokenLambda:
        def invoke(self, FunctionName, Payload):  # noqa: N803
            return {"StatusCode": 200, "FunctionError": "Unhandled",
                    "Payload": io.BytesIO(b'{"errorMessage": "Task timed out"}')}

    outcomes = smoke.run_via_function(BrokenLambda(), "probe", [smoke.Check.parse(c) for c in CHECKS[:2]], None, 5)
    assert [o.ok for o in outcomes] == [False, False]
    assert "Task timed out" in outcomes[0].detail
