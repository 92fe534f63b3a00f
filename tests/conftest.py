"""Shared fixtures. The real `cdk synth` runs (the CDK CLI, the pinned Node.js, the app's cdk.json) start in the
background at collection, once per test run, and the xdist workers share them (tests/synths.py)."""

from __future__ import annotations

import functools
import os
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import HTTPServer

import boto3
import botocore.loaders
import botocore.session
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from config.loader import load_config
from constructs_lib.jsii_kernel import limit_background_threads
from tests.assembly import Assembly
from tests.certificates import LocalCA
from tests.cfn_server import ResponseRecorder
from tests.postgres_server import VERSIONS as POSTGRES_VERSIONS
from tests.postgres_server import PostgresServer
from tests.synths import FIXTURES, LINT_FIXTURE, Synths
from tests.tls_servers import SHUTDOWN_POLL

# moto builds every region's EC2 backend with its catalogue of public AMIs (a second and more per test that touches
# EC2); no test uses an AMI.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
# The tests that build constructs in-process start the CDK's Node.js kernel as the app does.
limit_background_threads()
# Each botocore session gets a loader of its own, which parses botocore's JSON data (endpoints, service models) again:
# the tools make a session per account or per run, the tests hundreds. In the tests, one loader per data path.
botocore.session.create_loader = functools.cache(botocore.loaders.create_loader)

# The Stages of the shipped config, in promotion order: Staging, Production.
STAGES = tuple(environment.stage_id for environment in load_config().environments)


# The modules that run longest once their assembly is there: the LiteLLM proxy's start, the release review's runs.
# (cfn-lint runs in the synth's own job.)
LONGEST_AFTER_SYNTH = ("tests.test_litellm_proxy", "tests.test_changes")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: start only the synths the selected tests read
def pytest_collection_modifyitems(session, config, items):
    """Start the synths the collected tests need, and run the modules that need none first (their servers and
    processes wait a lot: the synths use those cores meanwhile). Modules stay whole: xdist runs one per worker."""
    needed = {FIXTURES[name] for item in items for name in item.fixturenames if name in FIXTURES}
    if not needed or config.option.collectonly:
        return
    synths = _synths(config)
    lint = any(LINT_FIXTURE in item.fixturenames for item in items)
    for name in sorted(needed):
        synths.start(name, lint=lint and name == FIXTURES[LINT_FIXTURE])
    reads_assembly = {item.module.__name__ for item in items if FIXTURES.keys() & set(item.fixturenames)}
    # Stable sort: collection order otherwise. Of the modules that wait for an assembly, the longest go first, so that
    # neither worker is left alone with one of them at the end (a scheduling hint only).
    def rank(item) -> tuple[bool, int]:
        name = item.module.__name__
        longest = LONGEST_AFTER_SYNTH.index(name) if name in LONGEST_AFTER_SYNTH else len(LONGEST_AFTER_SYNTH)
        return name in reads_assembly, longest

    items.sort(key=rank)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "_coder_synths"):
        session.config._coder_synths.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


def _synths(config) -> Synths:
    if not hasattr(config, "_coder_synths"):
        # The run's directory, shared by its xdist workers (each worker's own is one level below it).
        root = config._tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = root.parent
        config._coder_synths = Synths(root)
    return config._coder_synths


@pytest.fixture(scope="session")
def assembly(request) -> Assembly:
    return Assembly.load(_synths(request.config).assembly_directory("cdk"))


@pytest.fixture(scope="session")
def cfn_lint(request) -> list[dict]:
    """cfn-lint's runs over the app's templates, one per core: the synth's job starts them as soon as it has written
    the assembly (tests/synths.py)."""
    return _synths(request.config).lint_runs(FIXTURES[LINT_FIXTURE])


@pytest.fixture(scope="session")
def three_environments(request) -> Assembly:
    """The committed three-environment example, synthesized by the real CLI as the README says."""
    return Assembly.load(_synths(request.config).assembly_directory("three"))


@dataclass
class VariantSynth:
    result: subprocess.CompletedProcess
    assembly: Assembly


@pytest.fixture(scope="session")
def variant(request) -> VariantSynth:
    """The real CLI on tests/apps/planted_finding.py (the app plus unacknowledged buckets, which must fail synth)
    with a config variant (see tests/synths.py). The app writes its whole assembly before the CLI refuses it, so the
    variant's templates are readable."""
    synths = _synths(request.config)
    return VariantSynth(synths.result("variant"), Assembly.load(synths.directory("variant") / "cdk.out"))


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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}/response?signed=1"
    server.shutdown()




@pytest.fixture(scope="session", params=POSTGRES_VERSIONS)
def postgres(request):
    """A real PostgreSQL server (TLS only, an RDS-like non-superuser administrator) for the whole session: Debian's,
    and 16, the RDS major version the Data stack runs; every test that uses it runs against both."""
    server = PostgresServer.start(request.param)
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
