"""The real LiteLLM proxy (PyPI, the version of the config's image) with litellm/config.yaml and the environment of
the synthesized task definition: it lists the config's models, answers a chat completion through the corporate
gateway, and its trace reaches Langfuse on the path and with the credentials Langfuse 4 ingests.

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
}
NOT_IN_THIS_WORLD = {"DATABASE_URL", "LITELLM_CONFIG_BUCKET_NAME", "LITELLM_CONFIG_BUCKET_OBJECT_KEY"}


def test_the_tested_proxy_is_the_images_version():
    assert pinned_version() == image_version(), "tests/litellm/constraints.txt and the config's LiteLLM image differ"


def _task_environment(assembly) -> tuple[dict[str, str], set[str]]:
    platform = assembly.stack("Staging", "Platform")
    task = platform.resources[platform.logical_id("/Platform/LiteLLM/Service/TaskDefinition/Resource")]["Properties"]
    (container,) = task["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"] if e["Name"] not in NOT_IN_THIS_WORLD}
    assert all(isinstance(v, str) for v in environment.values()), environment  # plain values, nothing left to resolve
    return environment, {s["Name"] for s in container["Secrets"]}


@pytest.fixture(scope="module")
def world(assembly, tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to build a network namespace of its own")
    assert LITELLM.exists(), f"{LITELLM} is missing: `make test-deps` installs the LiteLLM proxy"
    directory = tmp_path_factory.mktemp("litellm")
    environment, secrets = _task_environment(assembly)
    assert secrets - {"DATABASE_URL"} == set(FAKE_SECRETS)
    langfuse_host = environment["LANGFUSE_OTEL_HOST"].removeprefix("https://")
    ca = LocalCA(directory / "ca")
    certificate, key = ca.issue(langfuse_host)
    environment.update(FAKE_SECRETS)
    environment["CUSTOM_LLM_API_BASE"] = "http://{gateway}/v2/api"
    environment["CUSTOM_LLM_CLAUDE_API_BASE"] = "http://{gateway}/v2/api/claude/messages"
    # The container trusts the public CAs the ALB's certificate chains to; this world's CA stands in for them.
    environment.update({"SSL_CERT_FILE": str(ca.bundle), "REQUESTS_CA_BUNDLE": str(ca.bundle)})
    # OpenTelemetry's batch span processor sends every 5 s by default: this world waited that long, idle, for the trace.
    # When the batch goes is not what is checked here (its path, credentials and content are).
    environment["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    spec = {
        "langfuse_host": langfuse_host, "certificate": str(certificate), "key": str(key), "environment": environment,
        "litellm": str(LITELLM), "config": str(ROOT / "litellm" / "config.yaml"), "log": str(directory / "litellm.log"),
        "model": "custom-gpt-4o-mini", "prompt": "ping",
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
    assert world["models"] == sorted(load_litellm_config().model_names)


def test_a_chat_completion_goes_through_the_corporate_gateway(world):
    assert world["completion"] == {"status": 200, "content": "pong"}
    (request,) = world["gateway"]
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
