"""HTTP checks through the internal ALB: every service answers on its own host name, with TLS verified.

The smoke-test probe Lambda runs this module inside a Stage's VPC (`index.py`); `python -m pipeline.smoke` imports it
to run the same checks from anywhere that reaches the ALB. Standard library only.

Each check opens TLS to the ALB with SNI = the check's host, verifies the certificate for that host, sends
`GET /path` with that Host, and passes on 2xx (or, with `@redirect:IDP_HOST`, on a redirect to that identity provider:
sign-in pages). Failing checks are retried until the deadline; network and TLS errors are outcomes, never tracebacks.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

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


def run_parallel(jobs: Sequence[tuple[str, str, Callable[[float], tuple[bool, int | None, str]]]],
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
    return run_parallel(jobs, deadline, interval)


def split_values(values: Sequence[str]) -> list[str]:
    """Repeatable options also accept whitespace- or comma-separated lists (as CloudFormation outputs carry them)."""
    return [item for value in values for item in re.split(r"[\s,]+", value.strip()) if item]
