"""CloudFormation custom resource: give a Secrets Manager secret JSON fields in the format its app requires.

Secrets Manager can generate random strings but not `sk-...` or `pk-lf-...` keys. This handler fills each
requested field once and never changes a field that already has a valid value, so a key an app depends on
(LiteLLM's master key, Langfuse's encryption key) survives stack updates and re-runs. Only the secret holds
the values: nothing is returned to CloudFormation or logged.

What it replaces: a field that is missing, and, in a secret created within the hour (CloudFormation's throwaway
first value of a secret the stack has just made, which is no JSON), anything. A secret older than that holds someone's
values (one imported from the Terraform deployment): every field that has a value keeps it, whatever its format
(regenerating it would lose what that key encrypts); a missing field with `SeedFrom` takes that field's value (the
app's own fallback, e.g. LiteLLM encrypts with its master key when it has no salt key); a value that is not a JSON
object fails the deploy with the fields it needs, and nothing is written.

Operator-supplied secrets (an API key, a client secret that only a person has) get `Placeholder` instead: a random
value is put only where the secret has none (no value at all, or, with `Field`, no such JSON field). Whatever is
there, a person's value or an earlier placeholder, is never changed, whatever the request.

Resource properties:
  SecretId: ARN of the secret
  Fields: {name: {"Prefix": str, "Length": int, "Alphabet": "alnum" | "hex"}}    (formatted fields), or
  Placeholder: {"Field": name | "", "Length": int}                               (operator-supplied)
"""

from __future__ import annotations

import datetime
import json
import logging
import secrets
import string

import boto3
from cfn_response import send_response

LOG = logging.getLogger()
LOG.setLevel(logging.INFO)

ALPHABETS = {"alnum": string.ascii_letters + string.digits, "hex": "0123456789abcdef"}


def random_value(spec: dict) -> str:
    alphabet = ALPHABETS[spec.get("Alphabet", "alnum")]
    length = int(spec["Length"])
    return spec.get("Prefix", "") + "".join(secrets.choice(alphabet) for _ in range(length))


def is_valid(value: object, spec: dict) -> bool:
    if not isinstance(value, str):
        return False
    prefix = spec.get("Prefix", "")
    body = value[len(prefix):]
    alphabet = ALPHABETS[spec.get("Alphabet", "alnum")]
    return value.startswith(prefix) and len(body) == int(spec["Length"]) and all(c in alphabet for c in body)


class KeptValue(Exception):
    """An older secret holds a value the handler would have to replace: the deploy fails, nothing is written."""


def describe(spec: dict) -> str:
    return f"{spec.get('Prefix', '')}<{spec['Length']} {spec.get('Alphabet', 'alnum')} characters>"


def fill_fields(current: str | None, fields: dict, replace: bool = True) -> tuple[dict, list[str]]:
    """Return the new JSON document and the names of the fields that were (re)generated or seeded. With `replace`
    False (an older secret), only missing fields are filled; a value that is not a JSON object raises KeptValue."""
    try:
        document = json.loads(current) if current else {}
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        if not replace:
            raise KeptValue("it holds a value that is not a JSON object; put the value as JSON with the fields "
                            + ", ".join(f"{name} ({describe(spec)})" for name, spec in sorted(fields.items())))
        document = {}
    before = dict(document)
    generated = []
    for name, spec in sorted(fields.items()):
        value = document.get(name)
        if is_valid(value, spec) or (not replace and isinstance(value, str) and value):
            continue
        seed = before.get(spec.get("SeedFrom", ""))
        document[name] = seed if not replace and isinstance(seed, str) and seed else random_value(spec)
        generated.append(name)
    return document, generated


def current_value(client, secret_id: str) -> str | None:
    """The secret's current string, or None when it has no value yet."""
    try:
        return client.get_secret_value(SecretId=secret_id).get("SecretString")
    except client.exceptions.ResourceNotFoundException:
        if client.describe_secret(SecretId=secret_id).get("VersionIdsToStages"):
            raise  # versions exist but none is current: not ours to repair
        return None


YOUNG = datetime.timedelta(hours=1)


def ensure_fields(client, secret_id: str, fields: dict, now: datetime.datetime | None = None) -> list[str]:
    created = client.describe_secret(SecretId=secret_id).get("CreatedDate")
    now = now or datetime.datetime.now(datetime.UTC)
    young = created is None or now - created < YOUNG
    try:
        document, generated = fill_fields(current_value(client, secret_id), fields, replace=young)
    except KeptValue as error:
        raise KeptValue(f"secret {secret_id}: {error}; nothing was changed (README: \"Moving from the Terraform "
                        "deployment\")") from None
    if generated:
        client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))
    return generated


def ensure_placeholder(client, secret_id: str, spec: dict) -> bool:
    """Put a random placeholder where the secret (or its JSON field) has no value; True if one was put."""
    current = current_value(client, secret_id)
    field = spec.get("Field") or ""
    placeholder = random_value({"Length": spec["Length"]})
    if not field:
        if current:
            return False
        client.put_secret_value(SecretId=secret_id, SecretString=placeholder)
        return True
    try:
        document = json.loads(current) if current else {}
    except json.JSONDecodeError:
        return False  # someone put a plain string there: theirs, not ours to touch
    if not isinstance(document, dict) or (isinstance(document.get(field), str) and document[field]):
        return False
    document[field] = placeholder
    client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))
    return True


def handler(event: dict, context, client=None, now: datetime.datetime | None = None) -> None:
    status, reason = "SUCCESS", ""
    try:
        if event["RequestType"] in ("Create", "Update"):
            props = event["ResourceProperties"]
            client = client or boto3.client("secretsmanager")
            if "Placeholder" in props:
                put = ensure_placeholder(client, props["SecretId"], props["Placeholder"])
                LOG.info("secret %s: %s", props["SecretId"], "placeholder put" if put else "value kept")
            else:
                generated = ensure_fields(client, props["SecretId"], props["Fields"], now)
                LOG.info("secret %s: generated fields %s", props["SecretId"], generated or "none")
    except Exception as error:  # report every failure to CloudFormation instead of letting it hang
        LOG.error("failed: %s", type(error).__name__)
        status, reason = "FAILED", f"{type(error).__name__}: {error}"[:500]
    physical_id = event.get("PhysicalResourceId") or event["ResourceProperties"]["SecretId"]
    send_response(event, context, status, physical_id, reason)
