"""Test doubles for what a custom-resource handler talks to: CloudFormation's pre-signed HTTPS response URL.

`response_url` (a fixture in conftest.py) serves HTTPS on 127.0.0.1 with a certificate from a CA the tests generate
and makes the process trust only that CA; every PUT body lands in `ResponseRecorder.received`.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class ResponseRecorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_PUT(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers["Content-Length"])
        ResponseRecorder.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass
