"""A stand-in for the internal ALB: one HTTPS port that picks its certificate by SNI and answers by Host header,
with certificates issued by a CA the tests generate."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHUTDOWN_POLL = 0.05  # seconds: how often a test server's loop checks for shutdown

Responder = Callable[[str], tuple[int, dict[str, str]]]  # path -> (status, headers)


class FakeAlb:
    """HTTPS on 127.0.0.1:<port>. `certificates` maps an SNI name (or `*.domain`) to the certificate presented for
    it (others get the default one); `routes` maps a Host header to a responder. Unknown hosts get 404, like the real listener."""

    def __init__(self, default_cert: tuple[Path, Path], certificates: dict[str, tuple[Path, Path]],
                 routes: dict[str, Responder]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str]] = []  # (host header, path)
        self.server_names: list[str | None] = []
        contexts = {}
        for server_name, (cert, key) in certificates.items():
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            contexts[server_name] = context
        default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        default.load_cert_chain(*default_cert)

        def pick(ssl_socket, server_name, _context):
            self.server_names.append(server_name)
            wildcard = "*." + server_name.split(".", 1)[1] if server_name and "." in server_name else None
            chosen = contexts.get(server_name) or contexts.get(wildcard)
            if chosen is not None:
                ssl_socket.context = chosen

        default.sni_callback = pick
        alb = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                host = (self.headers.get("Host") or "").split(":")[0]
                alb.requests.append((host, self.path))
                responder = alb.routes.get(host)
                status, headers = responder(self.path) if responder else (404, {})
                body = b"ok" if 200 <= status < 300 else b"no"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = super().get_request()
                # The handshake happens in the request thread, so one bad client never blocks the others.
                return default.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

            def handle_error(self, request, client_address):
                pass  # failed handshakes are what some tests provoke

        self.server = Server(("127.0.0.1", 0), Handler)
        # shutdown() waits up to one poll interval: 0.5 s by default, at the end of every test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeAlb:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def fixed(status: int, path: str | None = None, headers: dict[str, str] | None = None) -> Responder:
    def respond(request_path: str) -> tuple[int, dict[str, str]]:
        if path is not None and request_path != path:
            return 404, {}
        return status, headers or {}

    return respond


def healthy_after(seconds: float, path: str) -> Responder:
    """503 until `seconds` after the first request, 200 from then on (a service that is still starting)."""
    first: list[float] = []

    def respond(request_path: str) -> tuple[int, dict[str, str]]:
        if not first:
            first.append(time.monotonic())
        if request_path != path:
            return 404, {}
        return (200, {}) if time.monotonic() - first[0] >= seconds else (503, {})

    return respond


def closed_port() -> str:
    """An address where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


class SilentServer:
    """Accepts TCP connections and never answers: the TLS handshake times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join(1)
        for conn in self.held:
            conn.close()
        self.sock.close()
