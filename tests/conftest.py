"""One real `cdk synth` (the CDK CLI, the pinned Node.js, the app's cdk.json) per test run, shared by the xdist
workers: the first worker that needs an assembly synthesizes it under a file lock, the others read it."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import HTTPServer
from pathlib import Path

import boto3
import pytest
from filelock import FileLock
from moto import mock_aws
from moto.server import ThreadedMotoServer

from config.loader import DEFAULT_CONFIG_PATH, load_config
from tests.assembly import ROOT, Assembly
from tests.certificates import LocalCA
from tests.cfn_server import ResponseRecorder
from tests.postgres_server import PostgresServer

# The Stages of the shipped config, in promotion order: Staging, Production.
STAGES = tuple(environment.stage_id for environment in load_config().environments)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(ROOT / ".venv" / "bin"), env["PATH"]])
    return env


def cdk_synth(outdir: Path, *args: str) -> None:
    """Run the pinned CDK CLI exactly as `make synth` does (an open compliance finding fails it)."""
    result = subprocess.run(
        ["cdk", "synth", "--quiet", "--output", str(outdir), *args],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise AssertionError(f"cdk synth failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-5000:]}")


def shared(tmp_path_factory, name: str, build) -> Path:
    """`build(directory)` once per test run, whichever worker comes first; every worker gets the directory."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above the workers' own
    directory = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (directory / ".done").exists():
            directory.mkdir(exist_ok=True)
            build(directory)
            (directory / ".done").write_text("")
    return directory


@pytest.fixture(scope="session")
def assembly(tmp_path_factory) -> Assembly:
    directory = shared(tmp_path_factory, "cdk", lambda d: cdk_synth(d / "cdk.out"))
    return Assembly.load(directory / "cdk.out")


THREE_ENVIRONMENTS = ROOT / "config" / "examples" / "three-environments.toml"


@pytest.fixture(scope="session")
def three_environments(tmp_path_factory) -> Assembly:
    """The committed three-environment example, synthesized by the real CLI as the README says."""
    directory = shared(tmp_path_factory, "three", lambda d: cdk_synth(d / "cdk.out", "-c", f"config={THREE_ENVIRONMENTS}"))
    return Assembly.load(directory / "cdk.out")


VARIANT_EMAIL = "platform-oncall@example.com"
VARIANT_SECRET_VERSION = "0b7e6f3c-1d2a-4c5b-9e8f-7a6b5c4d3e2f"
VARIANT_COPY_VAULT = "arn:aws:backup:us-east-1:555555555555:backup-vault:coder-staging-copies"


@dataclass
class VariantSynth:
    result: subprocess.CompletedProcess
    assembly: Assembly


@pytest.fixture(scope="session")
def variant(tmp_path_factory) -> VariantSynth:
    """The session's only other synth: the real CLI on tests/apps/planted_finding.py (the app plus unacknowledged
    buckets, which must fail synth) with a config variant (a notification e-mail, a pinned OIDC secret version and a
    backup copy vault in staging). The app writes its whole assembly before the CLI refuses it, so the variant's templates are readable."""
    directory = shared(tmp_path_factory, "variant", _synthesize_variant)
    result = json.loads((directory / "result.json").read_text())
    return VariantSynth(subprocess.CompletedProcess(result["args"], result["returncode"], result["stdout"], result["stderr"]),
                        Assembly.load(directory / "cdk.out"))


def _synthesize_variant(directory: Path) -> None:
    base = DEFAULT_CONFIG_PATH.read_text()
    text = base.replace('notification_email = ""', f'notification_email = "{VARIANT_EMAIL}"', 1).replace(
        'client_secret_version = ""', f'client_secret_version = "{VARIANT_SECRET_VERSION}"', 1
    ).replace('copy_vault_arn = ""', f'copy_vault_arn = "{VARIANT_COPY_VAULT}"', 1)
    assert text.count(VARIANT_EMAIL) == 1 and text.count(VARIANT_SECRET_VERSION) == 1 and text.count(VARIANT_COPY_VAULT) == 1
    (directory / "variant.toml").write_text(text)
    outdir = directory / "cdk.out"
    result = subprocess.run(
        ["cdk", "synth", "--quiet", "--app", f"{sys.executable} tests/apps/planted_finding.py",
         "-c", f"config={directory / 'variant.toml'}", "--output", str(outdir)],
        cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=600,
    )
    (directory / "result.json").write_text(json.dumps(
        {"args": result.args, "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}))


@pytest.fixture(scope="session")
def app_config():
    return load_config()


@pytest.fixture(params=STAGES)
def stage(request) -> str:
    return request.param


@pytest.fixture
def env_config(app_config, stage):
    return app_config.environment(stage)


@pytest.fixture
def response_url(tmp_path, monkeypatch):
    ResponseRecorder.received = []
    ca = LocalCA(tmp_path / "ca")
    cert_file, key_file = ca.issue("127.0.0.1")
    server = HTTPServer(("127.0.0.1", 0), ResponseRecorder)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    # The handler verifies the server certificate against the default trust store: make it trust this CA only.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.bundle))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}/response?signed=1"
    server.shutdown()




@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (TLS only, an RDS-like non-superuser administrator) for the whole session."""
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    """A real moto server over HTTP on loopback for the session (AWS_ENDPOINT_URL points clients at it)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_endpoint(moto_server):
    """The session's moto server, emptied for this test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))  # noqa: S310 - loopback
    return moto_server


@pytest.fixture
def secrets_client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-west-2")
