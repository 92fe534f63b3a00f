"""The real LiteLLM proxy (PyPI, the version of the config's image) with litellm/config.yaml and the environment of
the synthesized task definition: it lists the config's models, answers a chat completion through the corporate
gateway, and its trace reaches Langfuse on the path and with the credentials Langfuse 4 ingests. Two of them (the
service's replicas) share one real Redis (TLS, AUTH) as the Data stack's: a model's request limit holds across both,
nothing is cached, and every key they leave expires. An idle connection outlives uvicorn's 5 s default keep-alive.

Everything runs inside fresh network and mount namespaces (tests/apps/litellm_world.py): loopback only, the Langfuse
host of the task definition mapped to a fake Langfuse on 127.0.0.1:443 (TLS, a certificate from the tests' CA), the
gateway's base URL pointed at a fake OpenAI-compatible server, and every packet sent off loopback recorded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from constructs_lib.litellm_config import load_litellm_config
from tests.assembly import ROOT
from tests.certificates import LocalCA
from tests.litellm_version import image_version, pinned_version

LITELLM = ROOT / "build" / "litellm-venv" / "bin" / "litellm"
# What the container would get from Secrets Manager, faked. DATABASE_URL stays unset: with it LiteLLM's Prisma
# client downloads its query engine at start, which this offline world cannot; without it LiteLLM runs stateless.
FAKE_SECRETS = {
    "LITELLM_MASTER_KEY": "sk-test-master-0123456789abcdef",
    "LITELLM_SALT_KEY": "sk-test-salt-0123456789abcdef",
    "ANTHROPIC_API_KEY": "sk-ant-test-not-a-key",
    "CUSTOM_LLM_API_KEY": "gateway-test-key",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-test-public",
    "LANGFUSE_SECRET_KEY": "sk-lf-test-secret",
    "REDIS_PASSWORD": "redis-test-auth-token-0123456789",
}
# The Data stack's Redis primary endpoint, in this world (its name mapped to 127.0.0.1, its certificate from the CA).
REDIS_HOST = "primary.redis.platform.test"
REDIS_PORT = 6379  # the replication group's (constructs_lib/redis_cache.py; not imported here: it loads the CDK)
# Added to a copy of litellm/config.yaml: the only difference from the shipped file.
LIMITED_MODEL = {"model_name": "limited-2-rpm", "litellm_params": {
    "model": "openai/gpt-4o-mini", "api_base": "os.environ/CUSTOM_LLM_API_BASE", "api_key": "os.environ/CUSTOM_LLM_API_KEY",
    "rpm": 2}}
IDLE_SECONDS = 7  # longer than uvicorn's default keep-alive (5 s)
NOT_IN_THIS_WORLD = {"DATABASE_URL", "LITELLM_CONFIG_BUCKET_NAME", "LITELLM_CONFIG_BUCKET_OBJECT_KEY"}


def test_the_tested_proxy_is_the_images_version():
    assert pinned_version() == image_version(), "tests/litellm/constraints.txt and the config's LiteLLM image differ"


def _task_environment(assembly) -> tuple[dict[str, str], set[str]]:
    platform = assembly.stack("Staging", "Platform")
    task = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/TaskDefinition/Resource")]["Properties"]
    (container,) = task["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"] if e["Name"] not in NOT_IN_THIS_WORLD}
    # The Redis endpoint comes from the Data stack: here, this world's Redis.
    assert "RedisPrimaryEndPointAddress" in json.dumps(environment.pop("REDIS_HOST"))
    assert "RedisPrimaryEndPointPort" in json.dumps(environment.pop("REDIS_PORT"))
    environment |= {"REDIS_HOST": REDIS_HOST, "REDIS_PORT": str(REDIS_PORT)}
    assert all(isinstance(v, str) for v in environment.values()), environment  # plain values, nothing left to resolve
    return environment, {s["Name"] for s in container["Secrets"]}


@pytest.fixture(scope="module")
def world(assembly, tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to build a network namespace of its own")
    assert LITELLM.exists(), f"{LITELLM} is missing: `make test-deps` installs the LiteLLM proxy"
    assert shutil.which("redis-server") and shutil.which("redis-cli"), "`make test-deps` installs redis-server"
    directory = tmp_path_factory.mktemp("litellm")
    environment, secrets = _task_environment(assembly)
    assert secrets - {"DATABASE_URL"} == set(FAKE_SECRETS)
    langfuse_host = environment["LANGFUSE_OTEL_HOST"].removeprefix("https://")
    ca = LocalCA(directory / "ca")
    certificate, key = ca.issue(langfuse_host)
    redis_certificate, redis_key = ca.issue(REDIS_HOST)
    environment.update(FAKE_SECRETS)
    environment["CUSTOM_LLM_API_BASE"] = "http://{gateway}/v2/api"
    environment["CUSTOM_LLM_CLAUDE_API_BASE"] = "http://{gateway}/v2/api/claude/messages"
    # The container trusts the public CAs the ALB's and ElastiCache's certificates chain to; this world's CA stands in.
    environment.update({"SSL_CERT_FILE": str(ca.bundle), "REQUESTS_CA_BUNDLE": str(ca.bundle)})
    # OpenTelemetry's batch span processor sends every 5 s by default: this world waited that long, idle, for the trace.
    # When the batch goes is not what is checked here (its path, credentials and content are).
    environment["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    config = yaml.safe_load((ROOT / "litellm" / "config.yaml").read_text())
    config["model_list"].append(LIMITED_MODEL)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    spec = {
        "langfuse_host": langfuse_host, "certificate": str(certificate), "key": str(key), "environment": environment,
        "litellm": str(LITELLM), "config": str(directory / "config.yaml"), "log": str(directory / "litellm.log"),
        "model": "custom-gpt-4o-mini", "prompt": "ping", "limited_model": LIMITED_MODEL["model_name"],
        "idle_seconds": IDLE_SECONDS, "redis_db": config["litellm_settings"]["cache_params"]["db"],
        "redis": {"host": REDIS_HOST, "port": REDIS_PORT, "password": FAKE_SECRETS["REDIS_PASSWORD"],
                  "certificate": str(redis_certificate), "key": str(redis_key), "ca": str(ca.bundle)},
    }
    (directory / "world.json").write_text(json.dumps(spec))
    result = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", "--", sys.executable, str(ROOT / "tests" / "apps" / "litellm_world.py"),
         str(directory / "world.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    log = (directory / "litellm.log").read_text() if (directory / "litellm.log").exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + log[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    outcome["log"] = log
    return outcome


def test_the_proxy_starts_and_lists_exactly_the_configs_models(world):
    assert world["started"], world["log"][-3000:]
    assert world["models"] == sorted([*load_litellm_config().model_names, LIMITED_MODEL["model_name"]])


def test_a_chat_completion_goes_through_the_corporate_gateway(world):
    assert world["completion"] == {"status": 200, "content": "pong", "gateway_calls": 1}
    request = world["gateway"][0]
    assert (request["method"], request["path"]) == ("POST", "/v2/api/chat/completions")
    assert request["headers"]["authorization"] == f"Bearer {FAKE_SECRETS['CUSTOM_LLM_API_KEY']}"


def test_the_trace_reaches_langfuse_as_langfuse_4_ingests_it(world):
    """OTLP over HTTPS on /api/public/otel, Basic auth with the project's keys; no v2 ingestion batch."""
    traces = [r for r in world["langfuse"] if r["path"].startswith("/api/public/otel")]
    assert traces, f"no trace reached Langfuse; it received {[(r['method'], r['path']) for r in world['langfuse']]}"
    credentials = base64.b64encode(f"{FAKE_SECRETS['LANGFUSE_PUBLIC_KEY']}:{FAKE_SECRETS['LANGFUSE_SECRET_KEY']}".encode())
    for trace in traces:
        assert (trace["method"], trace["path"]) == ("POST", "/api/public/otel/v1/traces")
        headers = {k.lower(): v for k, v in trace["headers"].items()}
        assert headers["authorization"] == f"Basic {credentials.decode()}"
        assert headers["content-type"] == "application/x-protobuf" and trace["bytes"] > 0
    assert "custom-gpt-4o-mini" in "".join(t["body"] for t in traces) or "gpt-4o-mini" in "".join(t["body"] for t in traces)
    assert not [r for r in world["langfuse"] if r["path"].startswith("/api/public/ingestion")]


def test_nothing_leaves_loopback(world):
    """No price-map download, no telemetry, no DNS: every packet sent off loopback would be recorded here."""
    assert world["egress"] == []


def test_a_models_request_limit_holds_across_both_replicas(world):
    """rpm 2, requests alternating between the replicas: the third is refused, by the replica that has seen only one
    before it (per-task counting would let it through)."""
    limited = world["limited"]
    assert [(r["replica"], r["status"]) for r in limited] == [("4000", 200), ("4001", 200), ("4000", 429), ("4001", 429)]
    assert "RPM limit=2, current usage=3" in limited[2]["error"]


def test_nothing_is_cached_even_when_a_caller_asks(world):
    """Redis evicts nothing (Langfuse's queues): a caller cannot store answers there, with any lifetime."""
    assert [r["status"] for r in world["cache_requests"]] == [200, 200]
    assert world["cache_gateway_calls"] == 2  # both went to the gateway: no cached answer


def test_the_replicas_keep_their_state_in_their_own_database_and_every_key_expires(world):
    """Only LiteLLM's database holds keys (Langfuse's queues are in 0), and every one of them has a TTL."""
    keyspace = dict(line.split(":", 1) for line in world["redis_keyspace"].split() if line.startswith("db"))
    assert set(keyspace) == {f"db{1}"}, world["redis_keyspace"]
    counts = dict(item.split("=") for item in keyspace["db1"].split(","))
    assert int(counts["keys"]) > 0 and counts["keys"] == counts["expires"], counts
    assert any(":rpm:" in key for key in world["redis_keys"]), world["redis_keys"]  # the shared request count


def test_an_idle_connection_outlives_the_default_keep_alive(world):
    """The ALB reuses idle connections for up to its idle timeout: the proxy must not close them first (5 s by
    default in uvicorn; KEEPALIVE_TIMEOUT of the task definition)."""
    idle = world["idle"]
    assert idle == {"idle_seconds": IDLE_SECONDS, "first": 200, "closed": False, "second": 200, "same_socket": True}
