"""The smoke-test probe Lambda: runs the HTTP checks of `probe.py` inside the Stage's VPC.

Event: {"checks": [...], "connect": "HOST:PORT"?, "deadline": seconds?}; the ALB address and the default checks come
from the function's environment (SMOKE_CONNECT, SMOKE_CHECKS), the longest deadline from SMOKE_MAX_DEADLINE.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from probe import DEFAULT_DEADLINE, Check, parse_address, run_http_checks, split_values, tls_context


def handler(event: dict, _context=None) -> dict:
    checks = [Check.parse(text) for text in split_values(event.get("checks") or [os.environ.get("SMOKE_CHECKS", "")])]
    address = parse_address(event.get("connect") or os.environ["SMOKE_CONNECT"])
    deadline = min(float(event.get("deadline", DEFAULT_DEADLINE)), float(os.environ.get("SMOKE_MAX_DEADLINE", 270)))
    outcomes = run_http_checks(checks, address, tls_context(None), deadline)
    return {"results": [asdict(outcome) for outcome in outcomes]}
