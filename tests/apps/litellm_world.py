"""The real LiteLLM proxy in a world of its own, for tests/test_litellm_proxy.py. Run as root inside fresh network and
mount namespaces (`unshare --net --mount`): nothing it does can leave the machine.

    python tests/apps/litellm_world.py WORLD.json      # prints one JSON result line

The world: loopback up; one more interface (`egress0`, a TUN device this script holds) carrying the default route,
so any attempt to reach a non-loopback address (DNS included: resolv.conf names a server behind it) arrives here as a
packet, is recorded, and goes nowhere; /etc/hosts maps the Langfuse host of the task definition to 127.0.0.1; a fake Langfuse
answers HTTPS on 443 with a certificate for that host from the tests' CA, and records every request; a fake
OpenAI-compatible gateway answers chat completions on HTTP; a real Redis server (Debian's redis-server) answers only
TLS, with an AUTH password, on the Redis host and port of the task definition, as ElastiCache does.

Then two proxies (the service's replicas) start with the given config and environment, side by side. The first lists
its models, answers one chat completion, and the script waits for the trace. Then: a connection left idle longer than
uvicorn's default keep-alive (5 s) is used again; requests to a model with a small rpm limit alternate between the two
replicas; a caller asks for its answer to be cached; and Redis is asked what the replicas left in it.
"""

from __future__ import annotations

import fcntl
import http.client
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
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EGRESS = "egress0"
TRAP_ADDRESS = "192.0.2.1"  # TEST-NET-1: documentation only, and here on a device that drops everything
TRAP_DNS = "192.0.2.53"


def sh(*command: str) -> None:
    subprocess.run(command, check=True)


TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def build_world(*local_hosts: str) -> int:
    """The namespace's network and name files (`local_hosts` on 127.0.0.1); returns the TUN device that every
    non-loopback packet reaches."""
    sh("ip", "link", "set", "lo", "up")
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", EGRESS.encode(), IFF_TUN | IFF_NO_PI))
    sh("ip", "link", "set", EGRESS, "up")
    sh("ip", "addr", "add", f"{TRAP_ADDRESS}/32", "dev", EGRESS)
    sh("ip", "route", "add", "default", "dev", EGRESS)
    files = Path(tempfile.mkdtemp())
    (files / "hosts").write_text(f"127.0.0.1 localhost {' '.join(local_hosts)}\n")
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


def start_redis(redis: dict, directory: Path) -> subprocess.Popen:
    """A real Redis on `redis["port"]` that speaks TLS only and asks for the AUTH password, persisting nothing."""
    server = subprocess.Popen(  # noqa: S603 - the tests' own command line
        ["redis-server", "--port", "0", "--tls-port", str(redis["port"]), "--bind", "127.0.0.1",
         "--tls-cert-file", redis["certificate"], "--tls-key-file", redis["key"], "--tls-ca-cert-file", redis["ca"],
         "--tls-auth-clients", "no", "--requirepass", redis["password"], "--maxmemory-policy", "noeviction",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=open(directory / "redis.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the server's lifetime
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if redis_cli(redis, "PING").strip() == "PONG":
            return server
        time.sleep(0.2)
    raise RuntimeError("redis-server did not answer: " + (directory / "redis.log").read_text()[-2000:])


def redis_cli(redis: dict, *command: str) -> str:
    return subprocess.run(  # noqa: S603 - the tests' own command line
        ["redis-cli", "--tls", "--cacert", redis["ca"], "-h", redis["host"], "-p", str(redis["port"]),
         "-a", redis["password"], "--no-auth-warning", *command],
        capture_output=True, text=True, timeout=10,
    ).stdout


def attempt(url: str, key: str, body: dict) -> dict:
    """One request: its status and, when refused, the error's message."""
    try:
        status, _ = call(url, key, body)
        return {"status": status}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "error": error.read().decode(errors="replace")[:500]}


def idle_connection(port: int, idle_seconds: float) -> dict:
    """A request, `idle_seconds` of silence on the same connection, then another request on it, as the ALB does
    between two callers. `closed` is whether the server had closed the connection when the silence ended."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health/readiness")
    first = connection.getresponse()
    first.read()
    sock = connection.sock
    time.sleep(idle_seconds)
    sock.setblocking(False)
    try:
        closed = sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        closed = False
    sock.setblocking(True)
    sock.settimeout(30)
    try:
        connection.request("GET", "/health/readiness")
        second = connection.getresponse()
        second.read()
        status = second.status
    except (OSError, http.client.HTTPException) as error:
        status = repr(error)
    same = connection.sock is sock
    connection.close()
    return {"idle_seconds": idle_seconds, "first": first.status, "closed": closed, "second": status, "same_socket": same}


def start_proxies(world: dict, environment: dict, ports: tuple[int, ...], log) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(  # noqa: S603 - the tests' own command line
            [world["litellm"], "--config", world["config"], "--host", "127.0.0.1", "--port", str(port)],
            env={**environment, "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
            stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.mkdtemp(),
        )
        for port in ports
    ]


def wait_ready(proxies: list[subprocess.Popen], ports: tuple[int, ...], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    waiting = set(ports)
    while waiting and time.monotonic() < deadline and all(p.poll() is None for p in proxies):
        for port in sorted(waiting):
            try:
                if call(f"http://127.0.0.1:{port}/health/readiness", "")[0] == 200:
                    waiting.discard(port)
            except OSError:
                pass
        time.sleep(0.5)
    return not waiting


def main(world_file: str) -> int:
    world = json.loads(Path(world_file).read_text())
    redis = world["redis"]
    egress = Egress(build_world(world["langfuse_host"], redis["host"]))
    egress.start()
    serve(Langfuse, 443, (world["certificate"], world["key"]))
    gateway = serve(Gateway, 0)
    redis_server = start_redis(redis, Path(world["log"]).parent)
    environment = {key: value.replace("{gateway}", f"127.0.0.1:{gateway.server_port}")
                   for key, value in world["environment"].items()}
    ports = (4000, 4001)
    log = open(world["log"], "w")  # noqa: SIM115 - kept open for the proxies' lifetime
    proxies = start_proxies(world, environment, ports, log)
    result: dict = {"started": False}
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    key = environment["LITELLM_MASTER_KEY"]
    try:
        result["started"] = wait_ready(proxies, ports, world.get("start_seconds", 120))
        result["exit_codes"] = [p.poll() for p in proxies]
        if result["started"]:
            result["models"] = sorted(m["id"] for m in call(f"{first}/v1/models", key)[1]["data"])
            status, completion = call(f"{first}/v1/chat/completions", key, {
                "model": world["model"], "messages": [{"role": "user", "content": world["prompt"]}]})
            result["completion"] = {"status": status, "content": completion["choices"][0]["message"]["content"],
                                    "gateway_calls": len(Gateway.received)}
            deadline = time.monotonic() + world.get("trace_seconds", 30)
            while time.monotonic() < deadline and not any("/otel" in r["path"] for r in Langfuse.received):
                time.sleep(0.5)
            result["idle"] = idle_connection(ports[0], world["idle_seconds"])
            # A model's rpm counts per minute: all of it inside one minute.
            while time.gmtime().tm_sec > 45:
                time.sleep(1)
            limited = {"model": world["limited_model"], "messages": [{"role": "user", "content": "count me"}]}
            result["limited"] = [
                {"replica": url[-4:], **attempt(f"{url}/v1/chat/completions", key, limited)}
                for url in (first, second, first, second)
            ]
            before = len(Gateway.received)
            cached = {"model": world["model"], "messages": [{"role": "user", "content": "cache me"}],
                      "cache": {"use-cache": True, "ttl": 86400}}
            result["cache_requests"] = [attempt(f"{url}/v1/chat/completions", key, cached) for url in (first, first)]
            result["cache_gateway_calls"] = len(Gateway.received) - before
            result["redis_keyspace"] = redis_cli(redis, "INFO", "keyspace")
            result["redis_keys"] = sorted(redis_cli(redis, "-n", str(world["redis_db"]), "--scan").split())
    finally:
        for proxy in proxies:
            proxy.terminate()
        for proxy in proxies:
            try:
                proxy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proxy.kill()
        redis_server.terminate()
        time.sleep(0.5)
    result["langfuse"] = Langfuse.received
    result["gateway"] = [{k: r[k] for k in ("method", "path", "headers")} for r in Gateway.received]
    result["egress"] = egress.seen
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
