"""The secret-fields custom resource: against moto's Secrets Manager, answering a real local HTTPS server whose
certificate the test generates (the handler only answers https URLs, as CloudFormation's pre-signed URLs are)."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from constructs_lib.formatted_secret import HANDLER_DIR

spec = importlib.util.spec_from_file_location("secret_fields_handler", HANDLER_DIR / "index.py")
handler_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler_module)

FIELDS = {
    "master_key": {"Prefix": "sk-", "Length": 48, "Alphabet": "alnum"},
    "encryption_key": {"Prefix": "", "Length": 64, "Alphabet": "hex"},
}


class ResponseRecorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_PUT(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers["Content-Length"])
        ResponseRecorder.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def self_signed_certificate(directory):
    """A certificate for 127.0.0.1 and its key, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def response_url(tmp_path, monkeypatch):
    ResponseRecorder.received = []
    cert_file, key_file = self_signed_certificate(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), ResponseRecorder)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    # The handler verifies the server certificate against the default trust store: make it trust this one only.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}/response?signed=1"
    server.shutdown()


@pytest.fixture
def secrets_client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-west-2")


def event(request_type, secret_id, url, fields=FIELDS):
    return {
        "RequestType": request_type,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-west-2:222222222222:stack/Staging-Data/1",
        "RequestId": "req-1",
        "LogicalResourceId": "LiteLLMMasterKeyInitializer",
        "ResourceProperties": {"SecretId": secret_id, "Fields": fields},
    }


def stored(client, secret_id) -> dict:
    return json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])


def test_create_fills_fields_in_the_required_format(secrets_client, response_url):
    arn = secrets_client.create_secret(Name="staging/litellm/master-key", SecretString="random-initial")["ARN"]
    handler_module.handler(event("Create", arn, response_url), None, client=secrets_client)
    value = stored(secrets_client, arn)
    assert re.fullmatch(r"sk-[A-Za-z0-9]{48}", value["master_key"])
    assert re.fullmatch(r"[0-9a-f]{64}", value["encryption_key"])
    (response,) = ResponseRecorder.received
    assert response["Status"] == "SUCCESS"
    assert response["PhysicalResourceId"] == arn
    assert response["Data"] == {} and response["NoEcho"] is True
    assert value["master_key"] not in json.dumps(response)


def test_update_keeps_existing_valid_values(secrets_client, response_url):
    arn = secrets_client.create_secret(Name="s", SecretString="x")["ARN"]
    handler_module.handler(event("Create", arn, response_url), None, client=secrets_client)
    first = stored(secrets_client, arn)
    handler_module.handler(event("Update", arn, response_url), None, client=secrets_client)
    assert stored(secrets_client, arn) == first
    versions = secrets_client.list_secret_version_ids(SecretId=arn)["Versions"]
    assert len(versions) == 2  # the initial value and one write: the update wrote nothing


def test_operator_values_and_other_fields_are_preserved(secrets_client, response_url):
    operator_key = "sk-" + "A" * 48
    arn = secrets_client.create_secret(
        Name="s", SecretString=json.dumps({"master_key": operator_key, "note": "kept"})
    )["ARN"]
    handler_module.handler(event("Update", arn, response_url), None, client=secrets_client)
    value = stored(secrets_client, arn)
    assert value["master_key"] == operator_key
    assert value["note"] == "kept"
    assert re.fullmatch(r"[0-9a-f]{64}", value["encryption_key"])


def test_invalid_value_is_regenerated(secrets_client, response_url):
    arn = secrets_client.create_secret(Name="s", SecretString=json.dumps({"master_key": "no-prefix"}))["ARN"]
    handler_module.handler(event("Create", arn, response_url), None, client=secrets_client)
    assert stored(secrets_client, arn)["master_key"].startswith("sk-")


def test_delete_leaves_the_secret_alone(secrets_client, response_url):
    arn = secrets_client.create_secret(Name="s", SecretString="untouched")["ARN"]
    handler_module.handler(event("Delete", arn, response_url), None, client=secrets_client)
    assert secrets_client.get_secret_value(SecretId=arn)["SecretString"] == "untouched"
    assert ResponseRecorder.received[0]["Status"] == "SUCCESS"


def test_failure_is_reported_to_cloudformation(secrets_client, response_url):
    missing = "arn:aws:secretsmanager:us-west-2:222222222222:secret:does-not-exist-AbCdEf"
    handler_module.handler(event("Create", missing, response_url), None, client=secrets_client)
    (response,) = ResponseRecorder.received
    assert response["Status"] == "FAILED"
    assert "ResourceNotFoundException" in response["Reason"]


def test_plain_http_response_url_is_refused(secrets_client):
    arn = secrets_client.create_secret(Name="s", SecretString="x")["ARN"]
    with pytest.raises(ValueError, match="https"):
        handler_module.handler(event("Create", arn, "http://127.0.0.1:9/response"), None, client=secrets_client)


def test_random_values_differ():
    assert handler_module.random_value(FIELDS["master_key"]) != handler_module.random_value(FIELDS["master_key"])
