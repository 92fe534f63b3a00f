"""The real LiteLLM proxy in a world of its own, for tests/test_litellm_proxy.py. Run as root inside fresh network and
mount namespaces (`unshare --net --mount`): nothing it does can leave the machine.

    python tests/apps/litellm_world.py WORLD.json      # prints one JSON result line

The world: loopback up; one more interface (`egress0`, a TUN device this script holds) carrying the default route,
so any attempt to reach a non-loopback address (DNS included: resolv.conf names a server behind it) arrives here as a
packet, is recorded, and goes nowhere; /etc/hosts maps the Langfuse host of the task definition to 127.0.0.1; a fake Langfuse
answers HTTPS on 443 with a certificate for that host from the tests' CA, and records every request; a fake
OpenAI-compatible gateway answers chat completions on HTTP. Then the proxy starts with litellm/config.yaml and the
given environment, lists its models, answers one chat completion, and the script waits for the trace.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EGRESS = "egress0"
TRAP_ADDRESS = "192.0.2.1"  # TEST-NET-1: documentation only, and here on a device that drops everything
TRAP_DNS = "192.0.2.53"


def sh(*command: str) -> None:
    subprocess.run(command, check=True)


TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def build_world(langfuse_host: str) -> int:
    """The namespace's network and name files; returns the TUN device that every non-loopback packet reaches."""
    sh("ip", "link", "set", "lo", "up")
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", EGRESS.encode(), IFF_TUN | IFF_NO_PI))
    sh("ip", "link", "set", EGRESS, "up")
    sh("ip", "addr", "add", f"{TRAP_ADDRESS}/32", "dev", EGRESS)
    sh("ip", "route", "add", "default", "dev", EGRESS)
    files = Path(tempfile.mkdtemp())
    (files / "hosts").write_text(f"127.0.0.1 localhost {langfuse_host}\n")
    (files / "resolv.conf").write_text(f"nameserver {TRAP_DNS}\n")
    sh("mount", "--bind", str(files / "hosts"), "/etc/hosts")
    sh("mount", "--bind", str(files / "resolv.conf"), "/etc/resolv.conf")
    return tun


class Egress(threading.Thread):
    """Every packet sent off loopback: (protocol, destination, port, DNS name when it is a query)."""

    def __init__(self, tun: int) -> None:
        super().__init__(daemon=True)
        self.tun = tun
        self.seen: list[dict] = []

    def run(self) -> None:
        while True:
            packet = os.read(self.tun, 65535)
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue
            header = (packet[0] & 0x0F) * 4
            protocol, destination = packet[9], socket.inet_ntoa(packet[16:20])
            port = struct.unpack("!H", packet[header + 2:header + 4])[0] if protocol in (6, 17) else None
            entry = {"protocol": {6: "tcp", 17: "udp"}.get(protocol, protocol), "to": destination, "port": port}
            if protocol == 17 and port == 53:
                entry["dns"] = _query_name(packet[header + 8 + 12:])
            self.seen.append(entry)


def _query_name(data: bytes) -> str:
    labels, index = [], 0
    while index < len(data) and data[index]:
        length = data[index]
        labels.append(data[index + 1:index + 1 + length].decode(errors="replace"))
        index += 1 + length
    return ".".join(labels)


class Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []
    reply: bytes = b"{}"

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        type(self).received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                    "bytes": len(body), "body": body.decode("latin-1")})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(type(self).reply)))
        self.end_headers()
        self.wfile.write(type(self).reply)

    do_POST = do_GET = _record  # noqa: N815 (http.server's naming)

    def log_message(self, *args) -> None:
        pass


class Langfuse(Recorder):
    received: list[dict] = []


class Gateway(Recorder):
    received: list[dict] = []
    reply = json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1764150000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "pong"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }).encode()


def serve(handler, port: int, tls: tuple[str, str] | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def call(url: str, key: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,  # noqa: S310 - loopback
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.status, json.loads(response.read())


def main(world_file: str) -> int:
    world = json.loads(Path(world_file).read_text())
    egress = Egress(build_world(world["langfuse_host"]))
    egress.start()
    serve(Langfuse, 443, (world["certificate"], world["key"]))
    gateway = serve(Gateway, 0)
    environment = {key: value.replace("{gateway}", f"127.0.0.1:{gateway.server_port}")
                   for key, value in world["environment"].items()}
    proxy_port = 4000
    log = open(world["log"], "w")  # noqa: SIM115 - kept open for the proxy's lifetime
    proxy = subprocess.Popen(  # noqa: S603 - the tests' own command line
        [world["litellm"], "--config", world["config"], "--host", "127.0.0.1", "--port", str(proxy_port)],
        env={**environment, "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.mkdtemp(),
    )
    result: dict = {"started": False}
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        deadline = time.monotonic() + world.get("start_seconds", 120)
        while time.monotonic() < deadline and proxy.poll() is None:
            try:
                if call(f"{base}/health/readiness", "")[0] == 200:
                    result["started"] = True
                    break
            except OSError:
                time.sleep(0.5)
        result["exit_code"] = proxy.poll()
        if result["started"]:
            key = environment["LITELLM_MASTER_KEY"]
            result["models"] = sorted(m["id"] for m in call(f"{base}/v1/models", key)[1]["data"])
            status, completion = call(f"{base}/v1/chat/completions", key, {
                "model": world["model"], "messages": [{"role": "user", "content": world["prompt"]}]})
            result["completion"] = {"status": status, "content": completion["choices"][0]["message"]["content"]}
            deadline = time.monotonic() + world.get("trace_seconds", 30)
            while time.monotonic() < deadline and not any("/otel" in r["path"] for r in Langfuse.received):
                time.sleep(0.5)
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.kill()
        time.sleep(0.5)
    result["langfuse"] = Langfuse.received
    result["gateway"] = [{k: r[k] for k in ("method", "path", "headers")} for r in Gateway.received]
    result["egress"] = egress.seen
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
