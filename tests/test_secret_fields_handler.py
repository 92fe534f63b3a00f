"""The secret-fields custom resource: against moto's Secrets Manager, answering a real local HTTPS server whose
certificate the test generates (the handler only answers https URLs, as CloudFormation's pre-signed URLs are)."""

from __future__ import annotations

import json
import re

import pytest

from tests.cfn_server import ResponseRecorder
from tests.lambdas import load_handler

handler_module = load_handler("secret_fields")

FIELDS = {
    "master_key": {"Prefix": "sk-", "Length": 48, "Alphabet": "alnum"},
    "encryption_key": {"Prefix": "", "Length": 64, "Alphabet": "hex"},
}


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


def _two_hours_after_creation(client, arn):
    import datetime

    return client.describe_secret(SecretId=arn)["CreatedDate"] + datetime.timedelta(hours=2)


def test_an_older_secrets_plain_value_is_never_replaced_the_deploy_fails_instead(secrets_client, response_url):
    """A secret imported from the Terraform deployment holding a plain string: the custom resource cannot tell which
    field it is; it fails with the fields it needs, writes nothing and logs no value."""
    value = "sk-terraform-era-master-key"
    arn = secrets_client.create_secret(Name="prod/litellm/master-key", SecretString=value)["ARN"]
    handler_module.handler(event("Create", arn, response_url), None, client=secrets_client,
                           now=_two_hours_after_creation(secrets_client, arn))
    (response,) = ResponseRecorder.received
    assert response["Status"] == "FAILED" and "nothing was changed" in response["Reason"]
    assert ("it holds a value that is not a JSON object; put the value as JSON with the fields encryption_key "
            "(<64 hex characters>), master_key (sk-<48 alnum characters>)") in response["Reason"]
    assert value not in response["Reason"]
    assert secrets_client.get_secret_value(SecretId=arn)["SecretString"] == value
    assert len(secrets_client.list_secret_version_ids(SecretId=arn)["Versions"]) == 1


def test_an_older_secret_keeps_every_value_whatever_its_format_and_gets_only_missing_fields(secrets_client, response_url):
    """Terraform's LiteLLM key is not sk- + 48 characters, its Langfuse salt is base64: kept, not regenerated (what they
    encrypt would become unreadable); a missing field is generated, or seeded where the app falls back to another."""
    fields = {**FIELDS, "salt_key": {"Prefix": "sk-", "Length": 48, "Alphabet": "alnum", "SeedFrom": "master_key"}}
    arn = secrets_client.create_secret(Name="prod/litellm/master-key", SecretString=json.dumps({"master_key": "sk-short"}))["ARN"]
    handler_module.handler(event("Update", arn, response_url, fields), None, client=secrets_client,
                           now=_two_hours_after_creation(secrets_client, arn))
    value = stored(secrets_client, arn)
    assert value["master_key"] == "sk-short" and value["salt_key"] == "sk-short"  # LiteLLM's own fallback
    assert re.fullmatch(r"[0-9a-f]{64}", value["encryption_key"])
    assert ResponseRecorder.received[0]["Status"] == "SUCCESS"


def test_a_new_secret_gets_a_salt_key_of_its_own(secrets_client, response_url):
    fields = {**FIELDS, "salt_key": {"Prefix": "sk-", "Length": 48, "Alphabet": "alnum", "SeedFrom": "master_key"}}
    arn = secrets_client.create_secret(Name="s", SecretString="generated-by-cloudformation")["ARN"]
    handler_module.handler(event("Create", arn, response_url, fields), None, client=secrets_client)
    value = stored(secrets_client, arn)
    assert value["salt_key"] != value["master_key"] and value["salt_key"].startswith("sk-")


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


# --- operator-supplied secrets: a placeholder only where there is no value; a person's value is never replaced ------


def placeholder_event(request_type, secret_id, url, field=""):
    return {**event(request_type, secret_id, url, fields=None), "ResourceProperties": {
        "SecretId": secret_id, "Placeholder": {"Field": field, "Length": 32}}}


def versions(client, secret_id) -> int:
    return len(client.list_secret_version_ids(SecretId=secret_id)["Versions"])


def test_placeholder_fills_an_empty_operator_secret_once(secrets_client, response_url):
    arn = secrets_client.create_secret(Name="staging/litellm/anthropic-api-key")["ARN"]  # no value yet
    handler_module.handler(placeholder_event("Create", arn, response_url), None, client=secrets_client)
    first = secrets_client.get_secret_value(SecretId=arn)["SecretString"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", first)
    handler_module.handler(placeholder_event("Update", arn, response_url), None, client=secrets_client)
    assert secrets_client.get_secret_value(SecretId=arn)["SecretString"] == first and versions(secrets_client, arn) == 1
    assert [r["Status"] for r in ResponseRecorder.received] == ["SUCCESS", "SUCCESS"]


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_an_operators_value_is_never_replaced(secrets_client, response_url, request_type):
    arn = secrets_client.create_secret(Name="prod/litellm/anthropic-api-key", SecretString="sk-ant-api03-real-key")["ARN"]
    handler_module.handler(placeholder_event(request_type, arn, response_url), None, client=secrets_client)
    assert secrets_client.get_secret_value(SecretId=arn)["SecretString"] == "sk-ant-api03-real-key"
    assert versions(secrets_client, arn) == 1  # not even a new version with the same value


def test_a_json_field_is_added_only_when_missing(secrets_client, response_url):
    empty = secrets_client.create_secret(Name="staging/coder/oidc", SecretString='{"note": "kept"}')["ARN"]
    handler_module.handler(placeholder_event("Create", empty, response_url, "client_secret"), None, client=secrets_client)
    document = stored(secrets_client, empty)
    assert document["note"] == "kept" and re.fullmatch(r"[A-Za-z0-9]{32}", document["client_secret"])
    real = secrets_client.create_secret(Name="prod/coder/oidc", SecretString='{"client_secret": "Zx8~real.secret"}')["ARN"]
    handler_module.handler(placeholder_event("Update", real, response_url, "client_secret"), None, client=secrets_client)
    assert stored(secrets_client, real) == {"client_secret": "Zx8~real.secret"} and versions(secrets_client, real) == 1
    odd = secrets_client.create_secret(Name="prod/custom/plain", SecretString="a plain string someone put")["ARN"]
    handler_module.handler(placeholder_event("Update", odd, response_url, "client_secret"), None, client=secrets_client)
    assert secrets_client.get_secret_value(SecretId=odd)["SecretString"] == "a plain string someone put"
